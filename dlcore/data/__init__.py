"""Data: the embedded SyntheticScenes, PASCAL VOC 2012 (+ SBD), joint transforms, the VOC palette."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from dlcore.data.synthetic import SyntheticScenes
from dlcore.data.voc import VOCSegmentation

__all__ = ["SyntheticScenes", "VOCSegmentation", "read_image"]


def read_image(path) -> torch.Tensor:
    """An image file -> uint8 tensor [3,H,W], RGB, with its EXIF orientation applied (as a viewer shows it).

    A missing file raises FileNotFoundError, an unreadable or corrupt one ValueError, both naming the path.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # phones store rotation in EXIF, not in the pixels
            array = np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:  # PIL raises these for truncated / non-image files
        raise ValueError(f"cannot read image {path}: {exc}; is it a complete JPEG/PNG file?") from exc
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
