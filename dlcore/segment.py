"""Segmenting photographs: the files to read, the size the network sees, the outputs to write.

`python -m dlcore segment IMAGE_OR_DIR ... --checkpoint CKPT [--crf] --out DIR` (`dlcore.cli.segment`) segments
photographs with any built-in model and trained or imported weights, as DeepLab does at test time:
network -> bilinear upsampling to the image size -> (optionally) the fully connected CRF -> argmax
(DeepLab v2 Sec. 3; `dlcore.inference.Predictor`). For each image it writes

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
an input, another output or a file already there (unless --overwrite), --out is a writable folder, --alpha,
--max-side and --device are valid, and the checkpoint reads, holds finite weights and is for the model named.
A problem gives one line on stderr and exit code 2, with no output written (docs/reliability.md). Each output
file is written atomically (`dlcore.io.atomic_write`: temporary file, fsync, rename).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dlcore.data.palette import VOC_PALETTE
from dlcore.io import check_output_file

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
    """Labels int64 [H,W] (numpy) for image uint8 [3,H,W]: resized to fit `max_side`, labels resized back (nearest).

    `predictor`: a `dlcore.inference.Predictor` (the network, and the CRF if it has one)."""
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


# What segment holds per pixel of a photograph at its own size: the decoded image (PIL's 4-byte pixels, its
# array and the tensor), the labels resized back (float, then int64) and the overlay blended in float32.
# Measured: a 13000 x 13000 PNG peaked at 9.3 GB, 55 bytes a pixel; 64 leaves room.
BYTES_PER_PIXEL = 64


def check_segment_memory(model, path, height: int, width: int, max_side: int, crf: bool, device="cpu") -> None:
    """Refuse, before any image is decoded, an image whose segmentation needs more memory than there is: the
    full-size pixels on the host (`BYTES_PER_PIXEL`), and the network (and the CRF's lattice) at the size
    --max-side gives it, on `device` (`dlcore.measure`)."""
    from dlcore import resolve_device
    from dlcore.crf.lattice import lattice_memory_bytes
    from dlcore.measure import check_memory, inference_bytes

    h, w = fit_max_side(height, width, max_side)
    network = inference_bytes(model, 1, h, w) + (lattice_memory_bytes(h * w, 5, model.num_classes) if crf else 0)
    pixels = BYTES_PER_PIXEL * height * width
    device = resolve_device(device)
    what = f"segmenting {path} ({width} x {height} pixels, the network at {w} x {h} by --max-side {max_side})"
    fix = "shrink the image, or lower --max-side"
    if device.type == "cpu":
        check_memory(pixels + network, device, what, fix)
    else:
        check_memory(pixels, "cpu", what, fix)
        check_memory(network, device, what, fix)


def plan_outputs(paths, out, overlay_format: str, also_read=(), *,
                 overwrite: bool = False) -> list[tuple[Path, Path, Path]]:
    """(input, label PNG, overlay) per image; ValueError if an output would be an input, or two outputs one file,
    or replace a file that exists (unless `overwrite`: --overwrite), or cannot be written (`check_output_file`).

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
            check_output_file(target, "output", overwrite)
            written[key] = p
        plan.append((p, *targets))
    return plan


def image_writer(array: np.ndarray, path: Path, palette: bool = False):
    """A write_fn for atomic_write: the array as PNG (palette: VOC label PNG) or JPEG, by the path's suffix."""
    image = Image.fromarray(array.astype(np.uint8), mode="P" if palette else None)
    if palette:
        image.putpalette(VOC_PALETTE.tobytes())
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    return lambda f: image.save(f, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
