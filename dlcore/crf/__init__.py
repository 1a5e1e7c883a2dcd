"""The fully connected CRF of DeepLab v1 (Sec. 4) and v2 (Sec. 3.3), on CPU and CUDA with one code path.

    dense_crf(image uint8 [H,W,3], probs [L,H,W]) -> Q [L,H,W]   (numpy in -> numpy out, torch -> torch)
    DenseCRF(...)(images uint8 [B,3,H,W], probs [B,L,H,W]) -> Q [B,L,H,W]

Inference is Krähenbühl & Koltun's mean-field (`meanfield.py`) with the two Gaussian kernels filtered on a
permutohedral lattice (`lattice.py`); `exact.py` is the O(N^2) reference. The numbers match pydensecrf.

Defaults are DeepLab v1's DeepLab-LargeFOV settings, cross-validated on VOC 2012 val (DeepLab v1, Sec. 5
and its released CRF config): w1 = 4, sigma_alpha = 121, sigma_beta = 5, w2 = 3, sigma_gamma = 3,
10 iterations. DeepLab v2 fixes w2 = 3, sigma_gamma = 3 in the paper (Sec. 4.1) and cross-validates the rest;
its released ResNet-101 VOC config is `DEEPLAB_V2_RESNET101` (w1 = 4, sigma_alpha = 67, sigma_beta = 3,
w2 = 3, sigma_gamma = 1). Both, and `paper_crf(model name)`, are in `defaults.py`.
"""

from __future__ import annotations

import functools
import math
import numbers

import numpy as np
import torch
from torch import nn

from dlcore.crf.defaults import DEEPLAB_V1_LARGEFOV, DEEPLAB_V2_RESNET101, DEFAULTS, paper_crf
from dlcore.crf.exact import exact_gaussian_filter, kernels_at
from dlcore.crf.lattice import PermutohedralLattice, check_lattice_fits, lattice_memory_bytes
from dlcore.crf.meanfield import NORMALIZATIONS, PROB_FLOOR, kl_divergence, mean_field, pairwise_filter
from dlcore.crf.threads import cpu_threads

__all__ = [
    "dense_crf", "DenseCRF", "PermutohedralLattice", "exact_gaussian_filter", "kernels_at", "crf_features",
    "lattice_memory_bytes", "kl_divergence", "DEFAULTS", "DEEPLAB_V1_LARGEFOV", "DEEPLAB_V2_RESNET101", "paper_crf",
]


# Probabilities must sum to 1 over labels up to float32 rounding of a softmax.
_SUM_TOL = 1e-3


def _pixel_xy(h: int, w: int, device) -> torch.Tensor:
    """(x, y) of every pixel, row-major, [1, H*W, 2] float."""
    y, x = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([x, y], -1).reshape(1, h * w, 2).float()


def crf_features(images: torch.Tensor, sigma_alpha: float, sigma_beta: float, sigma_gamma: float):
    """Kernel features for images uint8 [B,3,H,W], pixels in row-major order per image (pydensecrf's DenseCRF2D).

    Returns (appearance [B*H*W, 5] = (x, y) / sigma_alpha, (R, G, B) / sigma_beta;
             smoothness [B*H*W, 2] = (x, y) / sigma_gamma; group [B*H*W] image index).
    """
    b, _, h, w = images.shape
    device = images.device
    xy = _pixel_xy(h, w, device).expand(b, -1, -1).reshape(-1, 2)
    rgb = images.permute(0, 2, 3, 1).reshape(-1, 3).float()
    appearance = torch.cat([xy / sigma_alpha, rgb / sigma_beta], 1)
    smoothness = xy / sigma_gamma
    group = torch.arange(b, device=device).repeat_interleave(h * w)
    return appearance, smoothness, group


@functools.lru_cache(maxsize=4)
def _position_lattice(h: int, w: int, sigma_gamma: float, device: torch.device, max_memory_bytes) -> PermutohedralLattice:
    """The smoothness kernel's lattice depends only on the pixel grid: built once per image size and sigma_gamma."""
    return PermutohedralLattice(_pixel_xy(h, w, device)[0] / sigma_gamma, max_memory_bytes=max_memory_bytes)


def _fast_mean_field(unary: torch.Tensor, pairwise, iterations: int) -> torch.Tensor | None:
    """Mean-field in the Triton kernels of `cuda.py` on a GPU (same update; None elsewhere or without Triton).

    Imported here, not at the top: CPU users never load Triton (0.2 s of import time).
    """
    if not unary.is_cuda:
        return None
    from dlcore.crf import cuda

    return cuda.mean_field(unary, pairwise, iterations) if cuda.available(unary.device) else None


# Kernel widths below this are refused: the lattice coordinates are feature / sigma, and for pixel
# coordinates (up to ~1e5) or colours (up to 255) a smaller sigma overflows the lattice's 62-bit keys and float32
# (measured: NaN Q from about 1e-17). Any sigma well below 1 already means no smoothing along that feature.
MIN_SIGMA = 1e-6
# Kernel weights above this in size are refused: the papers use 3 to 5, and w times the pairwise sums over an
# image's pixels must stay inside float32 (max 3.4e38; w1 = 1e300 or w2 = 1e39 gave an all-NaN Q).
MAX_WEIGHT = 1e12


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_params(iterations, w1, sigma_alpha, sigma_beta, w2, sigma_gamma, normalization,
                  max_memory_bytes=None) -> None:
    """Every parameter checked for type and range, so a bad one is a ValueError naming it, before any work."""
    if not _is_number(iterations) or not math.isfinite(iterations) or int(iterations) != iterations or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0 (the papers: 10), got {iterations!r}")
    for name, sigma in (("sigma_alpha", sigma_alpha), ("sigma_beta", sigma_beta), ("sigma_gamma", sigma_gamma)):
        if not _is_number(sigma) or not math.isfinite(sigma) or not sigma > 0:
            raise ValueError(f"{name} must be a finite number > 0 (a kernel width), got {sigma!r}")
        if sigma < MIN_SIGMA:
            raise ValueError(f"{name} = {sigma!r} is below {MIN_SIGMA:g}: the lattice coordinates (feature / "
                             f"{name}) would overflow; use a width of at least {MIN_SIGMA:g} (the papers: 1 to 121)")
    for name, w in (("w1", w1), ("w2", w2)):
        if not _is_number(w) or not math.isfinite(w) or abs(w) > MAX_WEIGHT:
            raise ValueError(f"{name} must be a finite kernel weight with |{name}| <= {MAX_WEIGHT:g} (larger ones "
                             f"overflow float32 in the pairwise term; the papers use 3 to 5), got {w!r}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if max_memory_bytes is not None and (not _is_number(max_memory_bytes) or not max_memory_bytes > 0):
        raise ValueError(f"max_memory_bytes must be None (the device's free memory) or a number of bytes > 0, "
                         f"got {max_memory_bytes!r}")


def _check_batch(images: torch.Tensor, probs: torch.Tensor) -> None:
    """Validate images uint8 [B,3,H,W] and probs [B,L,H,W] with clear messages (DenseCRF's layout)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"image must be uint8 RGB ([H,W,3] for dense_crf, [B,3,H,W] for DenseCRF), got dtype {images.dtype} "
            f"and shape {tuple(images.shape)}; convert with (image * 255).round().astype(np.uint8) from [0,1] "
            "floats, and stack grey images to 3 channels"
        )
    if probs.ndim != 4:
        raise ValueError(f"probs must be [L,H,W] (or [B,L,H,W] for DenseCRF), got shape {tuple(probs.shape)}")
    if probs.shape[1] < 2:
        raise ValueError(f"probs has {probs.shape[1]} label(s); a CRF needs at least 2 labels to choose between")
    if images.shape[0] != probs.shape[0] or images.shape[2:] != probs.shape[2:]:
        raise ValueError(
            f"image and probs differ in size: image {tuple(images.shape)} vs probs {tuple(probs.shape)}; "
            "upsample the network's probabilities to the image size first (bilinear, as DeepLab does)"
        )
    if probs.shape[2] == 0 or probs.shape[3] == 0:
        raise ValueError(f"the image is empty ({probs.shape[2]} x {probs.shape[3]} pixels); a CRF needs at least one pixel")
    if not probs.is_floating_point():
        raise ValueError(f"probs must be floating point probabilities (softmax output), got dtype {probs.dtype}")
    if not torch.isfinite(probs).all():
        raise ValueError("probs contain NaN or Inf; pass softmax probabilities, not raw logits or log-probabilities")
    if (probs < 0).any():
        raise ValueError("probs contain negative values; pass softmax probabilities, not logits (use torch.softmax)")
    # Summed in float32, against the rounding of the dtype given: bfloat16 holds a probability to 2^-8 of itself,
    # so a bf16 softmax sums to 1 only within ~0.004 (its eps, 2^-7, bounds that).
    total = probs.float().sum(1)
    if ((total - 1).abs() > max(_SUM_TOL, torch.finfo(probs.dtype).eps)).any():
        worst = float((total - 1).abs().max())
        raise ValueError(
            f"probs must sum to 1 over the label axis (axis 0 of [L,H,W], 1 of [B,L,H,W]); off by up to {worst:.3g}. "
            "Apply softmax over labels, or check the label axis comes first"
        )


class _InferenceOnly(torch.autograd.Function):
    """The inference-only CRF's Q, tied to probs that require grad so that a backward pass through it stops with
    an explanation instead of a gradient that silently never reaches the network. The forward is `refine` itself
    (same numbers); the check costs nothing when no gradient is asked for (probs without grad, or no_grad)."""

    @staticmethod
    def forward(ctx, probs, refine):
        return refine(probs)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("dense_crf / DenseCRF are inference-only: their Q has no gradient with respect to probs. "
                           "To train through the CRF use dlcore.crf.LearnableCRF(num_labels) on the logits "
                           "(CRF as RNN: gradients to the unaries, w1, w2 and the compatibility); to refine "
                           "without a graph, call it under torch.no_grad() or pass probs.detach()")


class DenseCRF(nn.Module):
    """Fully connected CRF with mean-field inference for batches: forward(images uint8 [B,3,H,W], probs [B,L,H,W]).

    The whole batch shares one lattice build (the image index is part of each lattice key), so on a GPU
    a batch costs a handful of sparse matrix products per iteration. No learnable parameters, and inference
    only: with probs that require grad (outside no_grad) Q is the same, and a backward pass through it raises
    an error that points to `LearnableCRF`, the trainable layer (zero iterations return probs itself).
    """

    def __init__(self, iterations: int = DEFAULTS["iterations"], *, w1: float = DEFAULTS["w1"],
                 sigma_alpha: float = DEFAULTS["sigma_alpha"], sigma_beta: float = DEFAULTS["sigma_beta"],
                 w2: float = DEFAULTS["w2"], sigma_gamma: float = DEFAULTS["sigma_gamma"], normalization: str = "symmetric",
                 max_memory_bytes: int | None = None):
        super().__init__()
        _check_params(iterations, w1, sigma_alpha, sigma_beta, w2, sigma_gamma, normalization, max_memory_bytes)
        self.iterations = int(iterations)
        self.w1, self.sigma_alpha, self.sigma_beta = float(w1), float(sigma_alpha), float(sigma_beta)
        self.w2, self.sigma_gamma = float(w2), float(sigma_gamma)
        self.normalization = normalization
        self.max_memory_bytes = max_memory_bytes

    def extra_repr(self) -> str:
        return (f"iterations={self.iterations}, w1={self.w1}, sigma_alpha={self.sigma_alpha}, sigma_beta={self.sigma_beta}, "
                f"w2={self.w2}, sigma_gamma={self.sigma_gamma}, normalization={self.normalization!r}")

    def forward(self, images: torch.Tensor, probs: torch.Tensor, trace: list | None = None) -> torch.Tensor:
        with _threads_for(probs):
            if self.iterations and torch.is_tensor(probs) and probs.requires_grad and torch.is_grad_enabled():
                return _InferenceOnly.apply(probs, lambda p: self._refine(images, p, trace))  # Q, whose backward explains
            return self._refine(images, probs, trace)

    def sweep_w1(self, images: torch.Tensor, probs: torch.Tensor, w1s) -> list[torch.Tensor]:
        """`forward` once for each w1 of `w1s` in place of this CRF's: the lattices depend on the kernel widths
        alone, so they are built once (the cross-validation tries several w1 for each pair of widths)."""
        for w1 in w1s:
            _check_params(self.iterations, w1, self.sigma_alpha, self.sigma_beta, self.w2, self.sigma_gamma,
                          self.normalization, self.max_memory_bytes)
        with _threads_for(probs):
            return self._refine(images, probs, None, [float(w) for w in w1s])

    @torch.no_grad()
    def _refine(self, images: torch.Tensor, probs: torch.Tensor, trace: list | None, w1s: list | None = None):
        if probs.ndim == 4 and self.iterations:  # from the shapes alone, before the value checks' temporaries
            check_lattice_fits(probs.shape[0] * probs.shape[2] * probs.shape[3], 5, probs.shape[1], probs.device,
                               self.max_memory_bytes)
        _check_batch(images, probs)
        if self.iterations == 0:
            return probs if w1s is None else [probs for _ in w1s]
        images = images.to(probs.device)
        b, num_labels, h, w = probs.shape
        appearance, _, group = crf_features(images, self.sigma_alpha, self.sigma_beta, self.sigma_gamma)
        # the smoothness kernel sees only the pixel grid: its lattice is built once per image size
        position = _position_lattice(h, w, self.sigma_gamma, probs.device, self.max_memory_bytes)
        lattices = [PermutohedralLattice(appearance, group, self.max_memory_bytes),
                    position if b == 1 else position.repeat(b)]
        q = probs.float().permute(0, 2, 3, 1).reshape(-1, num_labels)
        unary = -torch.log(q.clamp_min(PROB_FLOOR))
        to_batch = lambda x: x.view(b, h, w, num_labels).permute(0, 3, 1, 2).contiguous().to(probs.dtype)  # noqa: E731
        out = []
        for w1 in [self.w1] if w1s is None else w1s:
            pairwise = pairwise_filter(lattices, [w1, self.w2], self.normalization)
            steps = None if trace is None else []
            q = _fast_mean_field(unary, pairwise, self.iterations) if trace is None else None
            if q is None:
                q = mean_field(unary, pairwise, self.iterations, steps)
            if not torch.isfinite(q).all():  # never hand back NaN as if it were a refined distribution
                raise FloatingPointError(f"the CRF produced NaN / Inf (w1={w1:g}, sigma_alpha={self.sigma_alpha:g}, "
                                         f"sigma_beta={self.sigma_beta:g}, w2={self.w2:g}, sigma_gamma={self.sigma_gamma:g}); "
                                         "use kernel widths and weights nearer the papers' (DEEPLAB_V1_LARGEFOV)")
            if trace is not None:
                trace.extend({**step, "q": to_batch(step["q"])} for step in steps)
            out.append(to_batch(q))
        return out[0] if w1s is None else out


def _threads_for(probs):
    """The whole CRF call at one thread count: fewer threads when other processes hold cores (threads.py)."""
    pixels = probs.shape[0] * probs.shape[2] * probs.shape[3] if torch.is_tensor(probs) and probs.ndim == 4 else 0
    return cpu_threads(pixels, probs.device if torch.is_tensor(probs) else torch.device("cpu"))


def dense_crf(image, probs, iterations: int = DEFAULTS["iterations"], *, w1: float = DEFAULTS["w1"],
              sigma_alpha: float = DEFAULTS["sigma_alpha"], sigma_beta: float = DEFAULTS["sigma_beta"],
              w2: float = DEFAULTS["w2"], sigma_gamma: float = DEFAULTS["sigma_gamma"], normalization: str = "symmetric",
              trace: list | None = None, max_memory_bytes: int | None = None):
    """Refine DCNN probabilities with the fully connected CRF (DeepLab v1 Sec. 4, Krähenbühl & Koltun 2011).

    image: uint8 RGB [H,W,3] (numpy or torch); probs: [L,H,W] softmax probabilities (numpy or torch, CPU or
    CUDA). Returns Q [L,H,W] of the same kind and device as `probs`. Defaults: DeepLab-LargeFOV's
    cross-validated settings (see the module docstring). `normalization`: "symmetric" (pydensecrf's default),
    "before", "after" or "none". `trace`: a list that receives, for Q_0..Q_T, {"iteration", "q" [L,H,W],
    "kl" (as pydensecrf's klDivergence), "energy", "entropy"}. Zero iterations return `probs` unchanged.
    Inference only (no gradient to probs; a backward pass through Q says so): to train through it, `LearnableCRF`.
    """
    _check_params(iterations, w1, sigma_alpha, sigma_beta, w2, sigma_gamma, normalization, max_memory_bytes)
    if trace is not None and not isinstance(trace, list):
        raise ValueError(f"trace must be None or a list to fill with the mean-field steps, got {type(trace).__name__}")
    if not isinstance(probs, np.ndarray) and not torch.is_tensor(probs):  # a list has no .shape / .device
        raise ValueError(f"probs must be a numpy array or a torch tensor [L,H,W], got a {type(probs).__name__}; "
                         "pass np.asarray(probs, dtype=np.float32)")
    if np.ndim(probs) == 3 and iterations:  # the lattice estimate from the shapes alone: before any copy or check
        device = probs.device if torch.is_tensor(probs) else torch.device("cpu")
        num_labels, h, w = probs.shape
        check_lattice_fits(h * w, 5, num_labels, device, max_memory_bytes)
    as_numpy = isinstance(probs, np.ndarray)
    probs_t = torch.from_numpy(np.ascontiguousarray(probs)) if as_numpy else probs
    image_t = torch.from_numpy(np.array(image)) if isinstance(image, np.ndarray) else torch.as_tensor(image)
    if image_t.ndim != 3 or image_t.shape[-1] != 3:
        raise ValueError(
            f"image must be uint8 RGB [H,W,3], got shape {tuple(image_t.shape)} and dtype {image_t.dtype}; "
            "stack grey images to 3 channels and drop an alpha channel (image[..., :3])"
        )
    if probs_t.ndim != 3:
        raise ValueError(f"probs must be [L,H,W] softmax probabilities, got shape {tuple(probs_t.shape)}")
    crf = DenseCRF(iterations, w1=w1, sigma_alpha=sigma_alpha, sigma_beta=sigma_beta, w2=w2, sigma_gamma=sigma_gamma,
                   normalization=normalization, max_memory_bytes=max_memory_bytes)
    steps = None if trace is None else []
    q = crf(image_t.permute(2, 0, 1)[None], probs_t[None], trace=steps)[0]
    if trace is not None:  # each step's Q [L,H,W] of the same kind as the result
        trace.extend({**step, "q": step["q"][0].numpy() if as_numpy else step["q"][0]} for step in steps)
    return q.numpy() if as_numpy else q


# The trainable CRF (CRF as RNN, Zheng et al. 2015): imported last, as learnable.py uses the helpers above.
from dlcore.crf.learnable import LearnableCRF  # noqa: E402

__all__ += ["LearnableCRF"]
