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

Everything is checked before anything is written: all inputs exist and decode, the checkpoint reads and is
for the model named. A problem gives one line on stderr and exit code 2, with no output written. Each output
file is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import os
import sys
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


def _save_image_atomic(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    try:
        Image.fromarray(array).save(tmp, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def add_segment_arguments(parser) -> None:
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
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the label colours")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _prepare(args):
    """Every check that can fail on the inputs, before any output exists: -> (paths, checkpoint, model)."""
    from dlcore.checkpoint import load_checkpoint, load_model
    from dlcore.data import read_image

    paths = collect_images(args.inputs)
    fit_max_side(1, 1, args.max_side)
    checkpoint = load_checkpoint(args.checkpoint)
    model = load_model(checkpoint, name=args.model, device="cpu")
    for p in paths:  # decode every image once now, so a corrupt one stops the run before anything is written
        read_image(p)
    return paths, checkpoint, model


def run_segment(args) -> int:
    from tqdm.auto import tqdm

    from dlcore.data import read_image
    from dlcore.data.palette import save_label_png
    from dlcore.predict import Predictor
    from dlcore.protocol import checkpoint_normalize
    from dlcore.viz import overlay

    try:
        paths, checkpoint, model = _prepare(args)
        crf = (checkpoint.get("meta", {}).get("crf") or True) if args.crf else False
        predictor = Predictor(model, device=args.device, crf=crf, normalize=checkpoint_normalize(checkpoint))
    except (ValueError, FileNotFoundError) as e:
        print(f"segment: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for p in tqdm(paths, desc="segment", unit="image", disable=args.no_progress):
        image = read_image(p)
        labels = segment_image(predictor, image, args.max_side)
        save_label_png(labels, out / f"{p.stem}.png")
        blend = overlay(image.permute(1, 2, 0).numpy(), labels, alpha=args.alpha)
        _save_image_atomic(blend, out / f"{p.stem}_overlay.{args.overlay_format}")
    print(f"segment: {len(paths)} image(s) -> {out}/ (<stem>.png labels, <stem>_overlay.{args.overlay_format})")
    return 0
