"""Segmentation scores as the papers report them.

FCN (Long et al., CVPR 2015, Sec. 5 "Metrics") defines, from n_ij = the number of pixels of class i
predicted to belong to class j, t_i = sum_j n_ij and n_cl classes:

    pixel accuracy           sum_i n_ii / sum_i t_i
    mean accuracy            (1/n_cl) sum_i n_ii / t_i
    mean IU                  (1/n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii)
    frequency weighted IU    (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)

with the PASCAL VOC conventions: pixels labelled 255 (the void band) are ignored, and a class absent
from both the prediction and the ground truth has no IoU (NaN) and is left out of the means (mean
accuracy averages the classes present in the ground truth). The DeepLab trimap experiment (v1 Sec. 5,
v2 Sec. 4.1, Fig. 5 / 10) scores only the pixels within a narrow band around object boundaries.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _flat(x, what: str):
    if isinstance(x, torch.Tensor):
        return x.detach().reshape(-1).long()
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{what} must hold integer class indices, got dtype {x.dtype}; take argmax of scores first")
    return torch.from_numpy(x.reshape(-1).astype(np.int64))


def confusion_matrix(pred, target, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """n_ij counts: int64 [C,C], rows = ground truth class i, columns = predicted class j.

    `pred` and `target` are label maps of one shape ([H,W], [N,H,W], ...), numpy or torch (any device).
    Pixels whose target is `ignore_index` are skipped; any other label outside 0..C-1 raises ValueError.
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    C = int(num_classes)
    if tuple(np.shape(pred)) != tuple(np.shape(target)):
        raise ValueError(f"pred {tuple(np.shape(pred))} and target {tuple(np.shape(target))} must have the same shape")
    p, t = _flat(pred, "pred"), _flat(target, "target")
    p = p.to(t.device)
    keep = t != ignore_index
    p, t = p[keep], t[keep]
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= C):
        raise ValueError(f"target labels must be 0..{C - 1} or {ignore_index} (void), got range "
                         f"{int(t.min())}..{int(t.max())}; is num_classes={C} right?")
    if p.numel() and (int(p.min()) < 0 or int(p.max()) >= C):
        raise ValueError(f"predicted labels must be 0..{C - 1}, got range {int(p.min())}..{int(p.max())}")
    counts = torch.bincount(t * C + p, minlength=C * C)
    return counts.reshape(C, C).cpu().numpy().astype(np.int64)


def scores_from_confusion(cm) -> dict:
    """FCN Sec. 5's four scores (floats in [0,1]) and per-class `iou` (np.ndarray [C], NaN for absent classes)."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix is square [C,C], got shape {cm.shape}")
    total = cm.sum()
    if total == 0:
        raise ValueError("the confusion matrix is empty: every target pixel was void (255) or nothing was scored")
    n_ii = np.diag(cm)
    t_i = cm.sum(axis=1)  # ground-truth pixels of class i
    p_i = cm.sum(axis=0)  # pixels predicted as class i
    union = t_i + p_i - n_ii
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, n_ii / union, np.nan)  # absent from both: no IoU, not 0 and not 1
        acc = np.where(t_i > 0, n_ii / t_i, np.nan)  # accuracy of a class needs ground-truth pixels
    freq = t_i / total
    present = t_i > 0
    return {
        "pixel_acc": float(n_ii.sum() / total),
        "mean_acc": float(np.nanmean(acc)),
        "miou": float(np.nanmean(iou)),
        # classes with t_i = 0 weigh 0; their IoU may be 0 (false positives) or NaN, so sum over present only
        "fwiou": float((freq[present] * iou[present]).sum()),
        "iou": iou,
    }


def scores(pred, target, num_classes: int, ignore_index: int = 255) -> dict:
    """pixel_acc, mean_acc, miou, fwiou and per-class iou of `pred` vs `target` (one image or a batch)."""
    return scores_from_confusion(confusion_matrix(pred, target, num_classes, ignore_index))


class ConfusionMatrix:
    """Accumulates n_ij over a dataset (the VOC protocol scores the summed matrix, not a mean over images)."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred, target) -> "ConfusionMatrix":
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        return self

    def reset(self) -> None:
        self.matrix[:] = 0

    def scores(self) -> dict:
        return scores_from_confusion(self.matrix)

    def __repr__(self):
        return f"ConfusionMatrix(num_classes={self.num_classes}, pixels={int(self.matrix.sum())})"


def boundary_band(target, band: int, ignore_index: int = 255) -> np.ndarray:
    """bool mask of the pixels within `band` px of a class boundary or of the void band (the trimap).

    Seeds are the void pixels and the labelled pixels whose 4-neighbour has another (non-void) label; the band is
    every pixel at Euclidean distance <= band from a seed (a dilation by a disc). On VOC, whose void band traces
    every object outline, this is "within `band` px of the void band", the definition behind the guide's reference
    measurement (62.3% IoU within 5 px for the coarse map of benchmarks/crf_voc.py). `target` is [H,W] or
    [N,H,W]; images of a batch do not bleed into each other. The void pixels themselves are in the mask: scoring
    ignores them.
    """
    if int(band) < 0:
        raise ValueError(f"band must be >= 0 pixels, got {band}")
    t = torch.as_tensor(np.asarray(target.cpu() if isinstance(target, torch.Tensor) else target)).long()
    if t.ndim not in (2, 3):
        raise ValueError(f"target must be [H,W] or [N,H,W], got shape {tuple(t.shape)}")
    batched = t.ndim == 3
    t = t if batched else t[None]
    seeds = t == ignore_index
    labelled = ~seeds
    # a class edge between two labelled pixels seeds both; next to void, the void pixels are the seeds
    dx = (t[:, :, 1:] != t[:, :, :-1]) & labelled[:, :, 1:] & labelled[:, :, :-1]
    dy = (t[:, 1:, :] != t[:, :-1, :]) & labelled[:, 1:, :] & labelled[:, :-1, :]
    seeds[:, :, 1:] |= dx
    seeds[:, :, :-1] |= dx
    seeds[:, 1:, :] |= dy
    seeds[:, :-1, :] |= dy
    out = _dilate_by_disc(seeds, int(band)).numpy()
    return out if batched else out[0]


def _dilate_by_disc(seeds: torch.Tensor, b: int) -> torch.Tensor:
    """bool [N,H,W]: the pixels within Euclidean distance `b` of a seed, exactly (a dilation by a disc).

    First each pixel's distance g to the nearest seed in its own row (two running maxima of seed columns); then
    a pixel is within b of a seed dy rows away when dy^2 + g^2 <= b^2 there. That is 2b + 1 elementwise passes,
    against the (2b + 1)^2 taps of a convolution with the disc (seconds per image at the 40 px band)."""
    if not b:
        return seeds.clone()
    n, h, w = seeds.shape
    cols = torch.arange(w).expand(n, h, w)
    far = torch.full_like(cols, -(w + b + 1))  # no seed in the row: farther than the band reaches
    left = torch.where(seeds, cols, far).cummax(2).values  # the nearest seed column at or left of x
    right = torch.where(seeds.flip(2), cols, far).cummax(2).values.flip(2)  # the same from the right
    g2 = torch.minimum(cols - left, (w - 1 - right) - cols) ** 2
    out = torch.zeros_like(seeds)
    for dy in range(0, min(b, h - 1) + 1):
        near = g2 <= b * b - dy * dy
        out[:, : h - dy] |= near[:, dy:]  # a seed dy rows below
        out[:, dy:] |= near[:, : h - dy]  # and dy rows above
    return out


def trimap_miou(pred, target, num_classes: int, band: int, ignore_index: int = 255) -> float:
    """Mean IoU over the pixels within `band` px of a boundary (DeepLab's trimap experiment); [H,W] or [N,H,W]."""
    t = target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
    p = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and target {t.shape} must have the same shape")
    inside = boundary_band(t, band, ignore_index)
    banded = np.where(inside, t, ignore_index)  # pixels off the band become void: not scored
    return scores(p, banded, num_classes, ignore_index)["miou"]


def stride_oracle(mask, stride: int, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """The best labels an output-stride-`stride` map can carry for `mask` [H,W]: each stride x stride cell's majority
    label (void pixels vote for no class), upsampled by nearest neighbour. Scored, it is the ceiling of a net that
    gives each output cell one label; a net that upsamples its scores bilinearly can pass it by drawing an edge inside
    a cell (notebook 01: FCN-16s does)."""
    mask = torch.as_tensor(mask).long()
    if mask.dim() != 2 or int(stride) < 1:
        raise ValueError(f"stride_oracle needs one [H,W] label map and a stride >= 1, got {tuple(mask.shape)} and {stride}")
    onehot = F.one_hot(torch.where(mask == ignore_index, num_classes, mask), num_classes + 1)[..., :num_classes]
    votes = F.avg_pool2d(onehot.permute(2, 0, 1).float()[None], stride, ceil_mode=True)
    cells = votes.argmax(1)
    return cells.repeat_interleave(stride, 1).repeat_interleave(stride, 2)[0, : mask.shape[0], : mask.shape[1]]
