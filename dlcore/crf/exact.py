"""The exact dense Gaussian filter, O(N^2): the reference the permutohedral lattice is tested against.

Krähenbühl & Koltun 2011, Sec. 3: the message passing step of mean-field is
Q~_i(l) = sum_{j} k(f_i, f_j) Q_j(l) with k(f_i, f_j) = exp(-|f_i - f_j|^2 / 2) on features already divided by
their sigmas. Done directly, it costs N^2 kernel evaluations: fine for a 64 x 64 crop, hopeless for a photo.
"""

from __future__ import annotations

import numpy as np
import torch


def exact_gaussian_filter(features: torch.Tensor, values: torch.Tensor, *, chunk: int = 2048) -> torch.Tensor:
    """sum_j exp(-|f_i - f_j|^2 / 2) v_j for features [N, d] and values [N, C] (the pixel itself included).

    Rows are processed `chunk` at a time so memory stays O(chunk * N) instead of O(N^2).
    """
    if features.ndim != 2 or values.ndim != 2 or features.shape[0] != values.shape[0]:
        raise ValueError(f"need features [N, d] and values [N, C] with the same N, got {tuple(features.shape)} and {tuple(values.shape)}")
    f = features.double()
    v = values.double()
    out = torch.empty_like(v)
    for start in range(0, f.shape[0], chunk):
        block = torch.cdist(f[start:start + chunk], f).square_()
        out[start:start + chunk] = torch.exp(-0.5 * block) @ v
    return out.to(values.dtype)


def kernels_at(image, y: int, x: int, *, sigma_alpha: float, sigma_beta: float, sigma_gamma: float):
    """The two kernels of DeepLab v1 Eq. 2 between pixel (y, x) and every pixel of image uint8 [H,W,3].

    appearance = exp(-|p_i - p_j|^2 / 2 sigma_alpha^2 - |I_i - I_j|^2 / 2 sigma_beta^2) (nearby and similar
    colour), smoothness = exp(-|p_i - p_j|^2 / 2 sigma_gamma^2) (nearby). Returns two float64 [H,W] arrays.
    """
    image = np.asarray(image, dtype=np.float64)
    h, w = image.shape[:2]
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"pixel ({y}, {x}) is outside the {h}x{w} image")
    yy, xx = np.mgrid[0:h, 0:w]
    dist2 = (yy - y) ** 2 + (xx - x) ** 2
    colour2 = ((image - image[y, x]) ** 2).sum(-1)
    appearance = np.exp(-dist2 / (2 * sigma_alpha**2) - colour2 / (2 * sigma_beta**2))
    smoothness = np.exp(-dist2 / (2 * sigma_gamma**2))
    return appearance, smoothness
