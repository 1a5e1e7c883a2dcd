"""The PASCAL VOC colour palette and label PNGs.

VOC 2012 stores ground truth as 8-bit palette ("P" mode) PNGs: the pixel value is the class index (0 =
background, 1..20 the object classes, 255 = void, the band drawn around every object boundary) and the
palette only makes them viewable. The palette is the bit-interleaving scheme of the VOC devkit's
`labelcolormap.m`: bit k of the class index goes to bit 7-k//3 of channel k%3.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dlcore.io import atomic_write


def _voc_palette(n: int = 256) -> np.ndarray:
    """The devkit's `labelcolormap(n)` in uint8 [n,3]."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for index in range(n):
        c, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):  # the lowest three bits of c go to the top bit of r, g, b
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[index] = (r, g, b)
    return palette


VOC_PALETTE = _voc_palette()
VOC_PALETTE.setflags(write=False)


def _as_numpy_labels(labels) -> np.ndarray:
    if hasattr(labels, "detach"):  # torch tensor on any device
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D [H,W] array of class indices, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must hold integer class indices, got dtype {labels.dtype}; take argmax of scores first")
    return labels


def colorize(labels, ignore_index: int = 255) -> np.ndarray:
    """Class indices [H,W] -> uint8 [H,W,3] in the VOC palette; `ignore_index` (void) is shown white.

    Indices outside 0..255 raise: they cannot be palette entries.
    """
    labels = _as_numpy_labels(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"labels must lie in 0..255 to be coloured, got range {labels.min()}..{labels.max()}")
    out = VOC_PALETTE[labels.astype(np.intp)]
    if ignore_index is not None:
        out[labels == ignore_index] = 255  # white, so the void band reads as a gap between objects
    return out


def save_label_png(labels, path) -> Path:
    """Write labels [H,W] (0..255) as a palette PNG as VOC does; atomic (temporary file, then rename)."""
    labels = _as_numpy_labels(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"a label PNG holds 0..255, got range {labels.min()}..{labels.max()}")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(VOC_PALETTE.tobytes())
    return atomic_write(path, lambda f: image.save(f, format="PNG"))


def read_label_png(path) -> np.ndarray:
    """A VOC label PNG -> int64 [H,W] of class indices (the palette indices, not the colours).

    Palette ("P") and greyscale ("L") PNGs hold indices directly (SBD's SegmentationClassAug is greyscale).
    An RGB rendering would give colours, not classes, so it is refused with a pointer to the palette PNGs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            array = np.array(image)
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"cannot read label PNG {path}: {exc}") from exc
    if mode not in ("P", "L"):
        raise ValueError(f"label PNG {path} is mode {mode!r}; VOC labels are palette ('P') or greyscale ('L') PNGs "
                         "whose pixel values are class indices (an RGB rendering holds colours, not classes)")
    return array.astype(np.int64)
