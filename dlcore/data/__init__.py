"""Data: the embedded SyntheticScenes, PASCAL VOC 2012 (+ SBD), joint transforms, the VOC palette."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from dlcore.data.synthetic import SyntheticScenes
from dlcore.data.voc import VOCSegmentation

__all__ = ["SyntheticScenes", "VOCSegmentation", "read_image", "image_size"]


def read_image(path) -> torch.Tensor:
    """An image file -> uint8 tensor [3,H,W], RGB, with its EXIF orientation applied (as a viewer shows it), and
    also the images that PIL's convert("RGB") would silently spoil: 16-bit grey (PIL clips it to 255, white)
    is scaled by its range, 0..65535 -> 0..255; floating-point ("F", all black) and 32-bit integer images are
    refused, since their range is not known. A decompression bomb is refused with the image's size. A missing
    file raises FileNotFoundError; a folder, an unreadable or a corrupt file ValueError, each naming the path."""
    with _opened(path) as im:
        fmt = im.format  # the transposed copy below has none
        im = ImageOps.exif_transpose(im)  # phones store rotation in EXIF, not in the pixels
        # mode "I" is 32-bit, except from PNG and PGM / PPM, whose samples have at most 16 bits. Decided by
        # the file's bit depth, not by its values: an int32 TIFF holding 0..255 is not a dark 16-bit image.
        if im.mode == "I" and fmt not in ("PNG", "PPM"):
            raise ValueError(f"image {path} holds 32-bit integer pixels, whose range dlcore cannot know; "
                             "convert it to an 8-bit RGB image first")
        if im.mode.startswith("I;16") or im.mode == "I":
            grey = np.asarray(im).astype(np.int64)
            # 16-bit: scale the full range, as a viewer shows it (65535 = white), not clip it
            array = np.repeat(((grey * 255 + 32767) // 65535).astype(np.uint8)[..., None], 3, axis=-1)
        elif im.mode == "F":
            raise ValueError(f"image {path} holds floating-point pixels (mode F), whose range dlcore cannot "
                             "know; convert it to 8-bit RGB first, e.g. (x - x.min()) / (x.max() - x.min()) * 255")
        else:
            array = np.asarray(im.convert("RGB"))
    # a copy, always: PIL's array is read-only, and for a 1 x 1 image the transpose is already contiguous, so
    # ascontiguousarray would hand torch the read-only array (and torch warns about it)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def image_size(path) -> tuple[int, int]:
    """(height, width) of an image file from its header, without decoding its pixels (the memory a command will
    need is estimated from it first); the same errors as `read_image`."""
    with _opened(path) as im:
        return im.height, im.width


@contextlib.contextmanager
def _opened(path):
    """Image.open(path), every failure a ValueError (FileNotFoundError for a missing file) naming the path."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"read_image takes the path of an image file (str or pathlib.Path), got {type(path).__name__}; "
                        "an image already in memory needs no reading: torch.from_numpy(array).permute(2, 0, 1)")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"image {path} is a folder, not an image file; give the image files in it "
                         "(python -m dlcore segment also takes a folder)")
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with warnings.catch_warnings():
            # PIL warns above 89 M pixels and refuses above 179 M; in between, the commands estimate the memory
            # an image needs from its size themselves (e.g. check_segment_memory) and refuse it by name
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                yield im
    except Image.DecompressionBombError as exc:
        raise ValueError(f"image {path} is too large to decode safely ({exc}); shrink it first "
                         "(--max-side resizes only after decoding)") from None
    except PermissionError:
        raise ValueError(f"cannot read image {path}: permission denied for this user; check its permissions "
                         "(ls -l) or copy it somewhere readable") from None
    except (OSError, SyntaxError) as exc:  # PIL raises these for truncated / non-image files
        raise ValueError(f"cannot read image {path}: {exc}; is it a complete JPEG/PNG file?") from None
