"""`python -m dlcore segment IMAGE_OR_DIR ... --model NAME --checkpoint CKPT [--crf] --out DIR`.

Segments photographs with any built-in model and trained or imported weights, as DeepLab does at test time:
network -> bilinear upsampling to the image size -> (optionally) the fully connected CRF -> argmax
(DeepLab v2 Sec. 3; `dlcore.predict.Predictor`). For each image it writes

    OUT/<stem>.png            the labels as a VOC palette PNG (class index = pixel value)
    OUT/<stem>_overlay.jpg    the labels' VOC colours blended over the photograph (--overlay-format png: .png)

Photographs are read with their EXIF orientation applied (`dlcore.data.read_image`), so a portrait photo
taken with the camera turned gives a portrait label map. Large images are *resized*, not tiled: when the
longer side exceeds --max-side (1024 by default) the image is scaled down (antialiased bilinear) so that it is
--max-side, segmented, and the labels are scaled back to the original size with nearest-neighbour
interpolation (labels are categories, never blended). The DCNN's output is itself 8x coarser than its input,
so this costs little accuracy for photographs, and it bounds the memory the network and the CRF need.

Everything is checked before anything is written: all inputs exist and decode (16-bit images are scaled
from 0..65535 to 0..255; floating-point images are refused: their range is unknown), no output would overwrite
an input or another output, --out is a writable folder, --alpha, --max-side and --device are valid, and the
checkpoint reads, holds finite weights and is for the model named. A problem gives one line on stderr and exit
code 2, with no output written (docs/reliability.md). Each output file is written atomically
(`dlcore.io.atomic_write`: temporary file, fsync, rename).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def collect_images(inputs) -> list[Path]:
    """Files as given, folders expanded to their images (sorted, not recursive); errors for missing paths."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"folder {p} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"input {p} does not exist; give image files or folders of images")
    if not paths:
        raise ValueError("no input images; give image files or folders of images")
    stems: dict[str, Path] = {}
    for p in paths:
        if p.stem in stems and stems[p.stem] != p:
            raise ValueError(f"{stems[p.stem]} and {p} would both write {p.stem}.png; rename one or run them "
                             "with different --out folders")
        stems[p.stem] = p
    return list(dict.fromkeys(paths))


def fit_max_side(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The size the network sees: the image scaled so that its longer side is at most `max_side`."""
    if max_side < 1:
        raise ValueError(f"--max-side must be >= 1 pixel, got {max_side}")
    longer = max(height, width)
    if longer <= max_side:
        return height, width
    scale = max_side / longer
    return max(1, round(height * scale)), max(1, round(width * scale))


def segment_image(predictor, image, max_side: int = 1024):
    """Labels int64 [H,W] (numpy) for image uint8 [3,H,W]: resized to fit `max_side`, labels resized back (nearest)."""
    import torch
    import torch.nn.functional as F

    h, w = image.shape[-2:]
    size = fit_max_side(h, w, max_side)
    x = image
    if size != (h, w):
        x = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)[0]
    labels = predictor(x)[0]
    if size != (h, w):
        labels = F.interpolate(labels[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
    return labels.cpu().numpy()


def read_photo(path):
    """An image file -> uint8 tensor [3,H,W]: `dlcore.data.read_image` (which also refuses images it cannot convert
    faithfully, and scales 16-bit ones by their range)."""
    from dlcore.data import read_image

    return read_image(path)


def plan_outputs(paths, out, overlay_format: str, also_read=()) -> list[tuple[Path, Path, Path]]:
    """(input, label PNG, overlay) per image; ValueError if an output would be an input, or two outputs one file.

    Checked on resolved paths, before anything is written: `segment DIR --out DIR` must not replace DIR/a.png
    with its labels, and `a.png` beside `a_overlay.jpg` must not make two outputs share `a_overlay.png`.
    `also_read`: other files the run reads (the checkpoint), protected the same way.
    """
    out = Path(out)
    inputs = {Path(p).resolve(): Path(p) for p in [*paths, *also_read]}
    written: dict[Path, Path] = {}
    plan = []
    for p in paths:
        targets = (out / f"{p.stem}.png", out / f"{p.stem}_overlay.{overlay_format}")
        for target in targets:
            key = target.resolve()
            if key in inputs:
                raise ValueError(f"{target} would overwrite the input {inputs[key]}; write to an --out folder "
                                 "that holds no input images")
            if key in written:
                raise ValueError(f"{written[key]} and {p} would both write {target}; rename one of them or run "
                                 "them with different --out folders")
            written[key] = p
        plan.append((p, *targets))
    return plan


def _image_writer(array: np.ndarray, path: Path, palette: bool = False):
    """A write_fn for atomic_write: the array as PNG (palette: VOC label PNG) or JPEG, by the path's suffix."""
    from PIL import Image

    from dlcore.data.palette import VOC_PALETTE

    image = Image.fromarray(array.astype(np.uint8), mode="P" if palette else None)
    if palette:
        image.putpalette(VOC_PALETTE.tobytes())
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    return lambda f: image.save(f, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def add_segment_arguments(parser) -> None:
    from dlcore.io import add_debug_argument

    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    parser.add_argument("--model", default=None,
                        help="model name; checked against the checkpoint (default: the checkpoint's model)")
    parser.add_argument("--checkpoint", required=True, help="a dlcore checkpoint (train or import-caffe)")
    parser.add_argument("--out", required=True, help="output folder: <stem>.png labels and <stem>_overlay.<ext>")
    parser.add_argument("--crf", action="store_true",
                        help="refine with the fully connected CRF (the checkpoint's CRF settings if it records "
                             "them, else DeepLab-LargeFOV's w1=4 sigma_alpha=121 sigma_beta=5 w2=3 sigma_gamma=3)")
    parser.add_argument("--max-side", type=int, default=1024,
                        help="resize so the longer side is at most this many pixels; labels resized back (nearest)")
    parser.add_argument("--overlay-format", choices=("jpg", "png"), default="jpg", help="overlay file type")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the label colours, 0..1")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_argument(parser)


def _prepare(args):
    """Every check that can fail on the inputs, before any output exists: -> (plan, checkpoint, model).

    The cheap checks (arguments, paths) come first, so a typo is reported before the model loads.
    """
    from dlcore.checkpoint import load_checkpoint, load_model, parse_device
    from dlcore.io import check_output_dir

    if not (math.isfinite(args.alpha) and 0.0 <= args.alpha <= 1.0):
        raise ValueError(f"--alpha must be an opacity in [0, 1] (0 = photo only, 1 = labels only), got {args.alpha}")
    fit_max_side(1, 1, args.max_side)
    parse_device(args.device)
    paths = collect_images(args.inputs)
    plan = plan_outputs(paths, args.out, args.overlay_format, also_read=[args.checkpoint])
    check_output_dir(args.out, "--out")
    for p in paths:  # decode every image once now, so a bad one stops the run before anything is written
        read_photo(p)
    checkpoint = load_checkpoint(args.checkpoint)
    model = load_model(checkpoint, name=args.model, device="cpu")
    if model.num_classes > 256:
        raise ValueError(f"the checkpoint predicts {model.num_classes} classes; a label PNG holds at most 256 (0..255)")
    return plan, checkpoint, model


def run_segment(args) -> int:
    from dlcore.io import atomic_write, command_error

    try:
        return _segment(args, atomic_write)
    except Exception as e:  # the CLI convention: one line, exit 2 for bad input, 1 for a failure while running
        return command_error("segment", e, args)


def _segment(args, atomic_write) -> int:
    from tqdm.auto import tqdm

    from dlcore.predict import Predictor
    from dlcore.protocol import checkpoint_normalize
    from dlcore.viz import overlay

    plan, checkpoint, model = _prepare(args)
    crf = (checkpoint.get("meta", {}).get("crf") or True) if args.crf else False
    predictor = Predictor(model, device=args.device, crf=crf, normalize=checkpoint_normalize(checkpoint))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for p, label_path, overlay_path in tqdm(plan, desc="segment", unit="image", disable=args.no_progress):
        image = read_photo(p)
        labels = segment_image(predictor, image, args.max_side)
        atomic_write(label_path, _image_writer(labels, label_path, palette=True))
        blend = overlay(image.permute(1, 2, 0).numpy(), labels, alpha=args.alpha)
        atomic_write(overlay_path, _image_writer(blend, overlay_path))
    print(f"segment: {len(plan)} image(s) -> {out}/ (<stem>.png labels, <stem>_overlay.{args.overlay_format})")
    return 0
