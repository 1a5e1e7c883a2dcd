"""pydensecrf's API on dlcore's CRF: `import dlcore.crf.compat as dcrf` runs pydensecrf code unchanged.

    d = dcrf.DenseCRF2D(W, H, L)                    # width first, as pydensecrf
    d.setUnaryEnergy(U)                             # U float32 [L, W*H], C-contiguous, U = -log P
    d.addPairwiseGaussian(sxy=3, compat=3)          # the papers' smoothness kernel: sigma_gamma = 3, w2 = 3
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=im, compat=10)  # appearance: sigma_alpha, sigma_beta, w1
    Q = d.inference(5)                              # float32 [L, W*H]; np.argmax(Q, axis=0) is the labelling

Nothing here is a second CRF: the kernels are dlcore's `PermutohedralLattice`, the update is
`meanfield.mean_field`, the KL is `meanfield.kl_divergence`. This module only translates pydensecrf's
arguments (layouts, enums, compatibilities) into them, and refuses bad input with the exception type
pydensecrf raises (its Cython typed memoryviews raise ValueError for dtype, rank and contiguity, TypeError
for None or a non-buffer), with a message that names the problem and the fix. docs/crf_parameters.md maps
sxy/srgb/compat to the papers' w1, sigma_alpha, sigma_beta, w2, sigma_gamma.

Where pydensecrf fails silently or crashes, this module raises instead: inference before setUnaryEnergy
(pydensecrf then runs with U = 0 and returns the uniform Q = 1/L), kernel widths <= 0 (a segfault there),
widths and weights that overflow float32 (dense_crf's limits, MIN_SIGMA and MAX_WEIGHT: an all-NaN Q),
non-finite energies, negative iteration counts, "probabilities" outside [0, 1] (logits passed to
unary_from_softmax), and a Q that is not finite is never returned.
"""

from __future__ import annotations

import enum
import numbers

import numpy as np
import torch

from dlcore.crf import MAX_WEIGHT, MIN_SIGMA
from dlcore.crf.lattice import FusedFilter, PermutohedralLattice, check_lattice_fits
from dlcore.crf.meanfield import kernel_scales, kl_divergence, mean_field

__all__ = [
    "DenseCRF", "DenseCRF2D", "unary_from_softmax", "unary_from_labels", "create_pairwise_gaussian",
    "create_pairwise_bilateral", "KernelType", "NormalizationType", "CONST_KERNEL", "DIAG_KERNEL", "FULL_KERNEL",
    "NO_NORMALIZATION", "NORMALIZE_BEFORE", "NORMALIZE_AFTER", "NORMALIZE_SYMMETRIC",
]


class KernelType(enum.IntEnum):
    """pydensecrf's kernel types. They differ only in which feature transform pydensecrf's learning code may
    fit; for inference all three are the same Gaussian, so they are accepted and otherwise ignored."""
    CONST_KERNEL = 0
    DIAG_KERNEL = 1
    FULL_KERNEL = 2


class NormalizationType(enum.IntEnum):
    """pydensecrf's kernel normalisations, with the same values; mapped to dlcore's names below."""
    NO_NORMALIZATION = 0
    NORMALIZE_BEFORE = 1
    NORMALIZE_AFTER = 2
    NORMALIZE_SYMMETRIC = 3


CONST_KERNEL, DIAG_KERNEL, FULL_KERNEL = KernelType
NO_NORMALIZATION, NORMALIZE_BEFORE, NORMALIZE_AFTER, NORMALIZE_SYMMETRIC = NormalizationType
_NORMALIZATION = {NO_NORMALIZATION: "none", NORMALIZE_BEFORE: "before", NORMALIZE_AFTER: "after",
                  NORMALIZE_SYMMETRIC: "symmetric"}


class _AssertionValueError(ValueError, AssertionError):
    """pydensecrf.utils checks gt_prob and scale with `assert`, so callers may catch AssertionError; this is
    both that and a ValueError, and unlike an assert it is not stripped by `python -O`."""


# ---- argument checks, in the terms of pydensecrf's Cython signatures ------------------------------------------


def _array(a, name: str, where: str, dtype, ndim: int | None, layout: str) -> np.ndarray:
    """`a` as a numpy array, refused as a Cython typed memoryview (`float[:, ::1]`, ...) refuses it."""
    if a is None:
        raise TypeError(f"{where}: argument '{name}' must not be None; pass a numpy {np.dtype(dtype)} array {layout}")
    if not isinstance(a, np.ndarray):
        try:  # pydensecrf accepts any object with the buffer protocol, and nothing else (not lists, not tensors)
            a = np.asarray(memoryview(a))
        except TypeError:
            raise TypeError(f"{where}: {name} must be a numpy array {layout}, got {type(a).__name__}; "
                            f"use np.asarray({name}, dtype=np.{np.dtype(dtype)}) (a torch tensor: .numpy())") from None
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{where}: {name} must have {ndim} dimensions {layout}, got shape {a.shape}")
    if a.dtype != dtype:
        raise ValueError(f"{where}: {name} must be {np.dtype(dtype)} (pydensecrf's buffer dtype), got {a.dtype}; "
                         f"convert with {name}.astype(np.{np.dtype(dtype)})")
    if not a.flags.c_contiguous:
        raise ValueError(f"{where}: {name} must be C-contiguous (a transpose, a crop or a [..., ::-1] view is not); "
                         f"pass np.ascontiguousarray({name})")
    return a


def _count(value, name: str) -> int:
    """A size: a positive integer (pydensecrf accepts 0 or negative sizes and then crashes later)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _widths(value, n: int, name: str) -> list[np.float32]:
    """sxy (n = 2) or srgb (n = 3): one number for all axes or one per axis, each > 0.

    Returned as float32, the type of pydensecrf's C++ arguments, so features are divided as there."""
    if isinstance(value, numbers.Number):
        values = [value] * n
    elif isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name} must be a number or a sequence of {n} numbers (kernel widths), got {value!r}")
    else:
        values = list(value)
    if len(values) < n:
        raise ValueError(f"{name} must be one number or {n} numbers (one per axis), got {value!r}")
    for v in values[:n]:  # pydensecrf reads the first n and ignores the rest
        if not isinstance(v, numbers.Real):
            raise TypeError(f"{name} must be real numbers (kernel widths), got {v!r}")
        if not (np.isfinite(v) and v > 0):  # pydensecrf segfaults on 0
            raise ValueError(f"{name} must be > 0 and finite (a Gaussian kernel's width), got {value!r}")
        if v < MIN_SIGMA:  # feature / width overflows the lattice: an all-NaN Q (issue 15)
            raise ValueError(f"{name} = {v!r} is below {MIN_SIGMA:g}: the lattice coordinates (feature / {name}) "
                             f"would overflow; use a width of at least {MIN_SIGMA:g} (pydensecrf examples: 3 to 80)")
    return [np.float32(v) for v in values[:n]]


def _compatibility(compat, nlabels: int):
    """pydensecrf's label compatibility: a number is PottsCompatibility(w), an [L] vector DiagonalCompatibility,
    an [L, L] matrix MatrixCompatibility (symmetrised, as pydensecrf does). Returns a float or an [L, L] tensor."""
    too_large = (f"compat must be finite with |compat| <= {MAX_WEIGHT:g} (the Potts weight, w1 or w2 in the papers, "
                 "3 to 10; larger ones overflow float32 in the pairwise term)")
    if isinstance(compat, numbers.Real):
        if not (np.isfinite(compat) and abs(compat) <= MAX_WEIGHT):
            raise ValueError(f"{too_large}, got {compat!r}")
        return float(compat)
    m = _array(compat, "compat", "addPairwise*", np.float32, None, "[L] or [L, L], or a number")
    if m.ndim not in (1, 2):
        raise ValueError(f"LabelCompatibility of dimension >2 not meaningful: compat has shape {m.shape}; "
                         "pass a number (Potts), an [L] vector (diagonal) or an [L, L] matrix")
    if m.shape != (nlabels,) * m.ndim:
        raise ValueError(f"compat must be [{nlabels}] or [{nlabels}, {nlabels}] for {nlabels} labels, got shape {m.shape}")
    if not (np.isfinite(m).all() and np.abs(m).max() <= MAX_WEIGHT):
        raise ValueError(f"{too_large}; this matrix holds entries up to {float(np.abs(m).max()):g}")
    return torch.from_numpy(np.diag(m) if m.ndim == 1 else 0.5 * (m + m.T))


def _iterations(n) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Real):
        raise TypeError(f"inference: the number of iterations must be an integer, got {n!r}")
    if not np.isfinite(n) or n != int(n) or n < 0:  # pydensecrf silently runs 0 iterations for n < 0
        raise ValueError(f"inference: the number of iterations must be an integer >= 0, got {n!r}")
    return int(n)


# ---- the CRF -------------------------------------------------------------------------------------------------


class DenseCRF:
    """pydensecrf.densecrf.DenseCRF(N, L): N variables (pixels), L labels, kernels on features you give."""

    def __init__(self, nvar, nlabels):
        self._nvar, self._nlabel = _count(nvar, "N (number of variables)"), _count(nlabels, "L (number of labels)")
        self._unary = None  # [N, L] float32 tensor: dlcore's pixel-major layout
        self._kernels = []  # (lattice, compat: float or [L, L] tensor, dlcore normalization name)
        self._message = None  # the pairwise operator, built at the first inference after a change

    def setUnaryEnergy(self, u, f=None):
        """U float32 [L, N], C-contiguous: -log P per label and variable (`unary_from_softmax` makes it)."""
        if f is not None:
            raise NotImplementedError("setUnaryEnergy(u, f): pydensecrf's learnable unary on features f is not "
                                      "supported; pass U only (inference uses U as it is)")
        u = _array(u, "u", "setUnaryEnergy", np.float32, 2, f"[L, N] = [{self._nlabel}, {self._nvar}]")
        if u.shape != (self._nlabel, self._nvar):
            raise ValueError(f"Bad shape for unary energy (Need {(self._nlabel, self._nvar)}, got {u.shape}): U is "
                             "[labels, pixels]; reshape with U.reshape(L, -1), transpose [N, L] input first")
        if not np.isfinite(u).all():
            raise ValueError("setUnaryEnergy: U contains NaN or Inf; clip probabilities before the log "
                             "(unary_from_softmax clips them at 1e-5)")
        self._unary = torch.from_numpy(np.ascontiguousarray(u.T))  # a copy, as pydensecrf keeps its own

    def addPairwiseEnergy(self, features, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC):
        """A Gaussian kernel exp(-|f_i - f_j|^2 / 2) on features float32 [D, N] (already divided by their widths)."""
        features = _array(features, "features", "addPairwiseEnergy", np.float32, 2, f"[D, N] = [D, {self._nvar}]")
        if features.shape[1] != self._nvar:
            raise ValueError(f"Bad shape for pairwise energy (Need (?, {self._nvar}), got {features.shape}): "
                             "features are [dimensions, pixels]")
        if not np.isfinite(features).all():
            raise ValueError("addPairwiseEnergy: features contain NaN or Inf; check the kernel widths")
        self._add(torch.from_numpy(features.T.copy()), compat, kernel, normalization)

    def _add(self, features: torch.Tensor, compat, kernel, normalization) -> None:
        """Build the kernel's lattice now, as pydensecrf does when a kernel is added, so inference reuses it."""
        if kernel not in tuple(KernelType):
            raise ValueError(f"kernel must be one of CONST_KERNEL, DIAG_KERNEL, FULL_KERNEL, got {kernel!r}")
        if normalization not in _NORMALIZATION:
            raise ValueError(f"normalization must be one of NO_NORMALIZATION, NORMALIZE_BEFORE, NORMALIZE_AFTER, "
                             f"NORMALIZE_SYMMETRIC, got {normalization!r}")
        compat = _compatibility(compat, self._nlabel)
        _check_fits(self._nvar, features.shape[1], self._nlabel, f"a {features.shape[1]}-D kernel on "
                    f"DenseCRF(N={self._nvar}, L={self._nlabel})")
        lattice = PermutohedralLattice(features)
        self._kernels.append((lattice, compat, _NORMALIZATION[NormalizationType(normalization)]))
        self._message = None

    def _pairwise(self):
        """Q [N, L] -> the pairwise term of the mean-field update, -sum_k mu_k (k~_k Q) (pydensecrf's tmp1 -= ...).

        Potts kernels (mu = -w: a reward for agreeing) go into one fused splat/blur/slice with w folded in, as
        dense_crf runs; a diagonal or matrix compatibility is a penalty applied after its own filter."""
        if self._message is None:
            scaled = [(lat, *kernel_scales(lat, norm), mu) for lat, mu, norm in self._kernels]
            potts = [(lat, pre, post * mu) for lat, pre, post, mu in scaled if isinstance(mu, float)]
            fused = FusedFilter(*zip(*potts)) if potts else None
            general = [(FusedFilter([lat], [pre], [post]), mu)
                       for lat, pre, post, mu in scaled if not isinstance(mu, float)]

            def message(q: torch.Tensor) -> torch.Tensor:
                out = fused(q) if fused is not None else torch.zeros_like(q)
                for filt, mu in general:
                    out -= filt(q) @ mu  # mu is symmetric: (mu Q^T)^T = Q mu
                return out

            self._message = message
        return self._message

    def _unary_or_raise(self, where: str) -> torch.Tensor:
        if self._unary is None:
            raise RuntimeError(f"{where} called before setUnaryEnergy(U): without a unary energy every label is "
                               f"equally likely, and pydensecrf would silently return the uniform Q = 1/{self._nlabel} "
                               "everywhere; call d.setUnaryEnergy(U) first (U from unary_from_softmax or unary_from_labels)")
        return self._unary

    def inference(self, niter):
        """`niter` mean-field iterations from Q0 = softmax(-U); returns Q float32 [L, N].

        Returned as a numpy array with the memory layout of pydensecrf's Eigen matrix (column-major [L, N]),
        so np.array(Q), np.argmax(Q, axis=0) and Q.reshape(...) behave as they do on pydensecrf's result."""
        unary = self._unary_or_raise("inference")
        n = _iterations(niter)
        return _finite(mean_field(unary, self._pairwise(), n), "inference").numpy().T

    def startInference(self):
        """(Q0, tmp1, tmp2) as pydensecrf: Q0 = softmax(-U); tmp1, tmp2 are scratch it passes back to stepInference."""
        q = torch.softmax(-self._unary_or_raise("startInference"), dim=1)
        empty = np.empty((0, 0), np.float32)
        return q.numpy().T, empty, empty.copy()

    def stepInference(self, Q, tmp1=None, tmp2=None):
        """One mean-field update of Q [L, N] in place (the update of `meanfield.mean_field`)."""
        unary = self._unary_or_raise("stepInference")
        q = self._q(Q, "stepInference")
        if not Q.flags.writeable:
            raise ValueError("stepInference: Q is read-only; it is updated in place (pass the Q from startInference)")
        Q[...] = _finite(torch.softmax(self._pairwise()(q) - unary, dim=1), "stepInference").numpy().T

    def klDivergence(self, Q) -> float:
        """KL(Q || P) up to log Z, as pydensecrf: sum Q log Q + sum U Q + sum_k sum Q mu_k k~_k Q."""
        q = self._q(Q, "klDivergence")
        return kl_divergence(q, self._unary_or_raise("klDivergence"), self._pairwise()(q))

    def _q(self, Q, where: str) -> torch.Tensor:
        if not isinstance(Q, np.ndarray):
            raise TypeError(f"{where}: Q must be the numpy array [L, N] that inference/startInference returned, "
                            f"got {type(Q).__name__}")
        if Q.shape != (self._nlabel, self._nvar) or Q.dtype != np.float32:
            raise ValueError(f"{where}: Q must be float32 [L, N] = {(self._nlabel, self._nvar)}, got {Q.dtype} {Q.shape}")
        return torch.from_numpy(np.ascontiguousarray(Q.T))


def _check_fits(n: int, d: int, labels: int, what: str) -> None:
    """The lattice's memory with every label filtered through it (inference filters all L at once), named by
    the call that asks for it: DenseCRF2D(1500, 1500, 255) wanted ~30 GB, found only by the allocator."""
    try:
        check_lattice_fits(n, d, labels, torch.device("cpu"))
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


def _finite(q: torch.Tensor, where: str) -> torch.Tensor:
    """Q, unless it holds NaN / Inf: never hand back NaN as if it were a distribution (dense_crf does the same)."""
    if not torch.isfinite(q).all():
        raise FloatingPointError(f"{where}: the CRF produced NaN / Inf; the features (addPairwiseEnergy) or the "
                                 "energies are too large for float32: use kernel widths and weights nearer "
                                 "pydensecrf's examples (sxy 3 to 80, srgb 13, compat 3 to 10)")
    return q


class DenseCRF2D(DenseCRF):
    """pydensecrf.densecrf.DenseCRF2D(W, H, L): an image of W x H pixels (width first), pixel index y * W + x."""

    def __init__(self, W, H, L):
        self.W, self.H = _count(W, "W (image width)"), _count(H, "H (image height)")
        # up front, as dense_crf does: the bilateral kernel's 5-D lattice carrying all L labels is the largest
        # buffer (pydensecrf users add it), before the coordinate grids below take 8 bytes a pixel
        _check_fits(self.W * self.H, 5, _count(L, "L (number of labels)"), f"DenseCRF2D(W={W}, H={H}, L={L})")
        super().__init__(self.W * self.H, L)
        y, x = np.mgrid[:self.H, :self.W].astype(np.float32)
        self._x, self._y = x.ravel(), y.ravel()

    def addPairwiseGaussian(self, sxy, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC):
        """Smoothness kernel w exp(-|p_i - p_j|^2 / 2 sxy^2): the papers' w2 = compat, sigma_gamma = sxy."""
        sx, sy = _widths(sxy, 2, "sxy")
        # float32 divisions, as pydensecrf's C++ (x / sx), so the lattice is built on the same numbers
        self._add(torch.from_numpy(np.stack([self._x / sx, self._y / sy], 1)), compat, kernel, normalization)

    def addPairwiseBilateral(self, sxy, srgb, rgbim, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC):
        """Appearance kernel w exp(-|p_i - p_j|^2 / 2 sxy^2 - |I_i - I_j|^2 / 2 srgb^2) on rgbim uint8 [H, W, 3]:
        the papers' w1 = compat, sigma_alpha = sxy, sigma_beta = srgb."""
        sx, sy = _widths(sxy, 2, "sxy")
        widths = _widths(srgb, 3, "srgb")
        rgbim = _array(rgbim, "rgbim", "addPairwiseBilateral", np.uint8, 3, f"[H, W, 3] = [{self.H}, {self.W}, 3]")
        if rgbim.shape[:2] != (self.H, self.W):
            raise ValueError(f"Bad shape for pairwise bilateral (Need {(self.H, self.W, 3)}, got {rgbim.shape}): "
                             "DenseCRF2D takes the width first, DenseCRF2D(im.shape[1], im.shape[0], L)")
        if rgbim.shape[2] != 3:
            raise ValueError(f"addPairwiseBilateral only works for RGB images [H, W, 3], got {rgbim.shape[2]} channels; "
                             "drop alpha with im[..., :3], or build features with create_pairwise_bilateral and "
                             "add them with addPairwiseEnergy")
        rgb = rgbim.reshape(-1, 3).astype(np.float32)
        features = np.stack([self._x / sx, self._y / sy] + [rgb[:, c] / widths[c] for c in range(3)], 1)
        self._add(torch.from_numpy(features), compat, kernel, normalization)


# ---- pydensecrf.utils ------------------------------------------------------------------------------------------


def unary_from_softmax(sm, scale=None, clip=1e-5):
    """U = -log P, float32 [L, N], from softmax probabilities sm [L, ...] (classes first, the rest flattened).

    scale: the softmax's certainty; P = scale * sm + (1 - scale) / L (uniform at 0). clip: floor on P
    before the log, so U stays finite (None: no clipping). As pydensecrf.utils.unary_from_softmax."""
    sm = np.asarray(sm)
    if sm.ndim < 1:
        raise ValueError(f"sm must be [L, ...] probabilities with the classes first, got a scalar {sm!r}")
    # Logits or scores here would be clipped into [clip, 1] and silently give a wrong unary (pydensecrf does so);
    # 1e-3 of slack for the rounding of a float16 softmax.
    if sm.size and not (np.isfinite(sm).all() and sm.min() >= -1e-3 and sm.max() <= 1 + 1e-3):
        raise ValueError(f"sm must hold probabilities in [0, 1] (a softmax over axis 0), got values in "
                         f"[{np.nanmin(sm):.4g}, {np.nanmax(sm):.4g}]" + ("" if np.isfinite(sm).all() else " and NaN/Inf")
                         + "; pass softmax(logits, axis=0) (torch.softmax(x, 0), scipy.special.softmax(x, axis=0)), "
                         "not the logits themselves")
    num_cls = sm.shape[0]
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not 0 < scale <= 1:
            raise _AssertionValueError(f"`scale` needs to be in (0,1], got {scale!r} (the softmax's certainty)")
        sm = scale * sm + (1 - scale) * (np.ones(sm.shape) / num_cls)
    if clip is not None:
        if isinstance(clip, bool) or not isinstance(clip, numbers.Real) or not 0 <= clip < 1:
            raise ValueError(f"clip must be None or a floor on P in [0, 1) (default 1e-5), got {clip!r}")
        sm = np.clip(sm, clip, 1.0)
    return np.ascontiguousarray(-np.log(sm).reshape([num_cls, -1]).astype(np.float32))


def unary_from_labels(labels, n_labels, gt_prob, zero_unsure=True):
    """U float32 [n_labels, N] from a label map: P = gt_prob on the given label, the rest shared by the others.

    zero_unsure: 0 means "unknown" (uniform P) and labels are 1..n_labels (n_labels does not count 0);
    otherwise labels are 0..n_labels-1. As pydensecrf.utils.unary_from_labels."""
    if isinstance(n_labels, bool) or not isinstance(n_labels, numbers.Integral) or n_labels < 2:
        raise ValueError(f"n_labels must be an integer >= 2 (the other labels share 1 - gt_prob), got {n_labels!r}"
                         + (" (with zero_unsure, 0 is 'unknown' and not counted)" if zero_unsure else ""))
    if isinstance(gt_prob, bool) or not isinstance(gt_prob, numbers.Real) or not 0 < gt_prob < 1:
        raise _AssertionValueError(f"`gt_prob must be in (0,1), got {gt_prob!r} (the certainty of the annotation)")
    labels = np.asarray(labels).flatten()
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be an integer label map, got dtype {labels.dtype}")
    low, high = (0, n_labels) if zero_unsure else (0, n_labels - 1)
    if labels.size and (labels.min() < low or labels.max() > high):
        # pydensecrf raises IndexError above the range, and silently wraps negative labels around
        raise IndexError(f"labels must lie in {low}..{high} for n_labels={n_labels}, zero_unsure={zero_unsure}, "
                         f"got {labels.min()}..{labels.max()}" + ("; 0 is 'unknown' and not counted in n_labels"
                                                                  if zero_unsure else ""))
    n_energy = -np.log((1.0 - gt_prob) / (n_labels - 1))
    p_energy = -np.log(gt_prob)
    U = np.full((n_labels, len(labels)), n_energy, dtype="float32")
    U[labels - 1 if zero_unsure else labels, np.arange(U.shape[1])] = p_energy  # label 0 writes row -1 ...
    if zero_unsure:
        U[:, labels == 0] = -np.log(1.0 / n_labels)  # ... which this overwrites: unknown pixels are uniform
    return U


def create_pairwise_gaussian(sdims, shape):
    """Features float32 [len(shape), N] for addPairwiseEnergy: pixel coordinates (index order) / sdims."""
    if len(sdims) != len(shape):  # pydensecrf leaves the other coordinates undivided, silently
        raise ValueError(f"sdims must give one width per axis of shape {tuple(shape)}, got {tuple(sdims)!r}")
    mesh = np.array(np.meshgrid(*[range(s) for s in shape], indexing="ij"), dtype=np.float32)
    for i, s in enumerate(sdims):
        mesh[i] /= s
    return mesh.reshape([len(sdims), -1])


def create_pairwise_bilateral(sdims, schan, img, chdim=-1):
    """Features float32 [len(sdims) + C, N]: coordinates / sdims, then channels / schan (channel axis chdim, -1: none)."""
    img = np.asarray(img)
    if isinstance(chdim, bool) or not isinstance(chdim, numbers.Integral) or not -1 <= chdim < img.ndim:
        raise ValueError(f"chdim must be the channel axis of img (0..{img.ndim - 1}; -1: img has no channel axis), "
                         f"got {chdim!r} for img of shape {img.shape}; an [H, W, 3] image has chdim=2")
    im_feat = img[np.newaxis].astype(np.float32) if chdim == -1 else np.rollaxis(img, chdim).astype(np.float32)
    if len(sdims) != im_feat.ndim - 1:  # pydensecrf leaves the other coordinates undivided, silently
        raise ValueError(f"sdims must give one width per spatial axis of img: {im_feat.ndim - 1} for shape {img.shape} "
                         f"with chdim={chdim}, got {len(sdims)} {tuple(sdims)!r}"
                         + ("; an [H, W, C] image needs chdim=2" if chdim == -1 and img.ndim == 3 else ""))
    if isinstance(schan, numbers.Number):
        im_feat /= schan
    else:
        if len(schan) != len(im_feat):
            raise ValueError(f"schan must be one width or one per channel ({len(im_feat)}), got {tuple(schan)!r}")
        for i, s in enumerate(schan):
            im_feat[i] /= s
    mesh = np.array(np.meshgrid(*[range(s) for s in im_feat.shape[1:]], indexing="ij"), dtype=np.float32)
    for i, s in enumerate(sdims):
        mesh[i] /= s
    feats = np.concatenate([mesh, im_feat])
    return feats.reshape([feats.shape[0], -1])
