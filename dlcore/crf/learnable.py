"""The CRF as a trainable layer: mean-field unrolled as a recurrent network (Zheng et al., "Conditional Random
Fields as Recurrent Neural Networks", ICCV 2015), backpropagating to the unaries, w1, w2 and mu.

    crf = LearnableCRF(num_labels=21)                       # Potts mu, DeepLab-LargeFOV kernels, T = 5
    q = crf(images uint8 [B,3,H,W], logits [B,L,H,W])       # -> Q [B,L,H,W], differentiable
    loss = F.nll_loss(torch.log(q), target); loss.backward()

One mean-field iteration is CRF-RNN's sequence of layers (Zheng et al. Sec. 4): message passing
m_k = k~_k Q (k = 1: appearance, w1 / sigma_alpha / sigma_beta; k = 2: smoothness, w2 / sigma_gamma), weighting
sum_k w_k m_k, compatibility transform (sum_k w_k m_k) mu^T, adding the unaries, and a softmax:

    Q <- softmax( logits - (w1 k~_1 Q + w2 k~_2 Q) mu^T )          logits = -U, the DCNN's scores

With mu = Potts (mu(l, l') = 1 - delta(l, l')) this is `meanfield.mean_field` exactly: the penalty on the other
labels is the reward on l minus a per-pixel constant that the softmax cancels. `LearnableCRF` on
logits = log(probs.clamp_min(PROB_FLOOR)) therefore gives `dense_crf(image, probs)`'s Q (to float32 rounding).

Why the backward pass is a filter. The message passing, weighting and compatibility transform are linear in Q,
and the symmetrically normalised kernel k~ = n^-1/2 K n^-1/2 is a symmetric matrix, so the gradient of the
message is the same filter applied to the incoming gradient (`_MessagePassing`). On the permutohedral lattice,
K = alpha S^T B_d ... B_0 S (splat S, one blur B_j per lattice direction, slice alpha S^T): each B_j is
symmetric but they do not commute on a sparse lattice, so K^T runs the blurs in reverse order
(`LatticeKernel.transpose`, as Krähenbühl & Koltun's learning code does, ICML 2013). That is the exact adjoint
of the forward filter, which is what gradcheck checks. The gradients to w_k and mu come from the same
filtered gradient, so each iteration saves only its input Q for backward; the lattice itself (features only)
is built once per image and shared by every iteration, forward and backward.

Memory, for a 500 x 375 image (N = 187,500 pixels), 21 labels, T = 5 iterations, float32 (`stored_bytes`):
    stored per iteration: Q_t, [N, L] = 187,500 x 21 x 4 B = 15.75 MB (15.0 MiB). Nothing else of size N x L is
    kept: the two messages, their weighted sum and the energy are freed as soon as the next Q exists.
    total for T = 5: Q_0 ... Q_5 = 6 x 15.75 MB = 94.5 MB (90.1 MiB), plus the two lattices, stored once per
    image whatever T: 82 to 95 MB on VOC photographs with DeepLab-LargeFOV's sigmas (index arrays and the sparse
    S, S^T and blur matrices; `lattice_bytes`). Backward holds a few more [N, L] buffers at a time.
    Plain autograd through the same sparse products keeps, per iteration, the messages and their weighted sum
    as well (for the gradients to w_k and mu) and the scaled inputs of the filters: measured 22 [N, L] tensors
    for T = 5 against our 6 (about 4 per iteration instead of 1), i.e. about 347 MB instead of 94.5 MB.
    Truncated backprop (`backprop_iterations=k`) runs the first T - k iterations without a graph and stores
    k + 1 tensors: k = 1 keeps 31.5 MB instead of 94.5 MB (and backward filters k times instead of T).
    Its gradient is that of the last k iterations with Q_{T-k} held fixed (the unaries still reach Q through
    each of those k steps directly).

The weights are parametrised as w_k = softplus(raw_w_k), so no optimiser step can make them negative; mu is a
free L x L matrix (CRF-RNN learns it so; it need not stay symmetric). A non-finite parameter (a diverged
training run) is refused at the next forward with an error that names it.

Why a separate module rather than `DenseCRF(..., differentiable=True)`: DenseCRF takes probabilities, has no
parameters, runs under `torch.no_grad()` with the fused Triton path on a GPU, and its validation is shared with
`dense_crf`; a trainable layer takes logits, owns nn.Parameters and always needs the saved graph. Keeping them
apart leaves the inference path exactly as fast and exactly as it was. `dense_crf` / `DenseCRF` compute Q without
a graph; given probs that require grad they return the same Q tied to them, and a backward pass through it raises
an error that names `LearnableCRF`, rather than a gradient that silently never reaches the network.
Only the symmetric normalisation (pydensecrf's default) is offered: the others are not symmetric matrices,
so their backward would need a second, transposed filter.

`filter="exact"` swaps the lattice for the O(N^2) exact Gaussian (`exact.py`): the reference for small images.
The code is device-agnostic (sparse CSR products on CPU and on CUDA); `cuda.py`'s Triton kernels are untouched
and remain the inference-only fast path.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

# dlcore.crf's __init__ imports this module last, so its helpers are defined by the time this line runs
from dlcore.crf import _check_params, _position_lattice, crf_features
from dlcore.crf.defaults import DEFAULTS
from dlcore.crf.exact import exact_gaussian_filter
from dlcore.crf.lattice import FusedFilter, PermutohedralLattice, _csr, check_lattice_fits
from dlcore.crf.meanfield import kernel_scales

__all__ = ["LearnableCRF", "LatticeKernel", "ExactKernel", "mean_field_rnn", "potts", "lattice_bytes", "stored_bytes"]

FILTERS = ("lattice", "exact")


def potts(num_labels: int) -> torch.Tensor:
    """The Potts compatibility mu(l, l') = 1 - delta(l, l') (DeepLab v1 Sec. 4.2): a penalty for differing labels."""
    return 1.0 - torch.eye(num_labels)


# ---- the two normalised kernels, each with its transpose ------------------------------------------------------


class LatticeKernel:
    """k~ v = n^-1/2 K (n^-1/2 v) on one permutohedral lattice, with K = alpha S^T B_d ... B_0 S; `transpose`: k~^T.

    S and S^T are built from the same barycentric weights, in the dtype of the values (float64 for gradcheck),
    so `transpose` is the exact adjoint of `__call__`. Matrices are made once per dtype and kept.
    """

    def __init__(self, lattice: PermutohedralLattice):
        self.lattice = lattice
        self.scale = kernel_scales(lattice, "symmetric")[0]  # n^-1/2, n = K 1 (as meanfield's pairwise filter)
        self._matrices = {}

    def matrices(self, dtype: torch.dtype):
        if dtype not in self._matrices:
            lat = self.lattice
            n, d1, m = lat.num_points, lat.d + 1, lat.num_vertices
            bary = lat.barycentric.to(dtype)
            splat = _csr(lat.crow, lat.order // d1, bary.reshape(-1)[lat.order], (m, n))  # S [M, N], rows by vertex
            cols, order = lat.offset.sort(1)  # S^T [N, M]: sorted columns per row, as the sparse backends expect
            crow = torch.arange(0, n * d1 + 1, d1, device=cols.device)
            slice_ = _csr(crow, cols.reshape(-1), bary.gather(1, order).reshape(-1), (n, m))
            blurs = []
            for pair in lat.neighbours:  # symmetric [M, M]: v + (v_n1 + v_n2) / 2 along one direction
                b = FusedFilter._blur_matrix(torch.stack(pair, 1))
                blurs.append(_csr(b.crow_indices(), b.col_indices(), b.values().to(dtype), b.shape))
            self._matrices[dtype] = splat, blurs, slice_, self.scale.to(dtype)[:, None]
        return self._matrices[dtype]

    def _apply(self, values: torch.Tensor, reverse: bool) -> torch.Tensor:
        splat, blurs, slice_, s = self.matrices(values.dtype)
        v = torch.sparse.mm(splat, s * values)
        for blur in (reversed(blurs) if reverse else blurs):
            v = torch.sparse.mm(blur, v)
        # alpha as a scalar, after: the same n^-1/2 on both sides keeps k~ and k~^T exact adjoints in any dtype
        return (self.lattice.alpha * s) * torch.sparse.mm(slice_, v)

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        return self._apply(values, reverse=False)

    def transpose(self, values: torch.Tensor) -> torch.Tensor:
        return self._apply(values, reverse=True)


class ExactKernel:
    """k~ v = n^-1/2 K (n^-1/2 v) with the exact Gaussian K (O(N^2), `exact.py`); symmetric, so k~^T = k~.

    `group` [N] keeps the images of a batch apart (their pixels are contiguous, image by image).
    """

    def __init__(self, features: torch.Tensor, group: torch.Tensor | None = None):
        counts = [features.shape[0]] if group is None else torch.bincount(group).tolist()
        self.blocks = features.split(counts)
        ones = features.new_ones(features.shape[0], 1, dtype=torch.float64)
        self.scale = 1.0 / torch.sqrt(self._raw(ones)[:, 0])

    def _raw(self, values: torch.Tensor) -> torch.Tensor:
        parts = values.split([f.shape[0] for f in self.blocks])
        return torch.cat([exact_gaussian_filter(f, v) for f, v in zip(self.blocks, parts)])

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        s = self.scale.to(values.dtype)[:, None]
        return s * self._raw(s * values)

    transpose = __call__


# ---- one mean-field step as an autograd Function ---------------------------------------------------------------


def _pairwise_energy(q, weights, mu, kernels):
    """(sum_k w_k k~_k Q) mu^T, [N, L]: CRF-RNN's message passing, weighting and compatibility transform."""
    pairwise = sum(w * k(q) for w, k in zip(weights, kernels))
    return pairwise @ mu.T


class _MessagePassing(torch.autograd.Function):
    """energy = (sum_k w_k k~_k Q) mu^T, whose backward filters the incoming gradient G with the kernels' transposes.

    With H_k = k~_k^T G (one filtering of L channels per kernel, as in the forward):
        dQ = sum_k w_k H_k mu,   dw_k = <Q, H_k mu>,   dmu = sum_k w_k H_k^T Q.
    Saved: Q only (and w, mu). The kernels, hence the lattice, are shared by every iteration, not copied.
    """

    @staticmethod
    def forward(ctx, q, weights, mu, kernels):
        ctx.kernels = kernels
        ctx.save_for_backward(q, weights, mu)
        return _pairwise_energy(q, weights, mu, kernels)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q, weights, mu = ctx.saved_tensors
        grad_q = grad_w = grad_mu = None
        filtered = [k.transpose(grad) for k in ctx.kernels]  # H_k
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            through_mu = [h @ mu for h in filtered]  # H_k mu = k~_k^T (G mu): the gradient of the k-th message
            if ctx.needs_input_grad[0]:
                grad_q = sum(w * g for w, g in zip(weights, through_mu))
            if ctx.needs_input_grad[1]:
                grad_w = torch.stack([(q * g).sum() for g in through_mu])
        if ctx.needs_input_grad[2]:
            grad_mu = sum(w * (h.T @ q) for w, h in zip(weights, filtered))
        return grad_q, grad_w, grad_mu, None


def mean_field_rnn(logits: torch.Tensor, kernels, weights: torch.Tensor, mu: torch.Tensor, iterations: int,
                   backprop_iterations: int | None = None) -> torch.Tensor:
    """Differentiable mean-field: logits [N, L] (= -U), kernels (k~_1, k~_2, ...), weights [K] (w_k > 0), mu [L, L].

    Q_0 = softmax(logits); Q_{t+1} = softmax(logits - (sum_k w_k k~_k Q_t) mu^T). Returns Q_T [N, L].
    `backprop_iterations` = k keeps the graph of the last k iterations only (None: all of them).
    """
    detached = 0 if backprop_iterations is None else max(0, iterations - backprop_iterations)
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detached):
        q = torch.softmax(logits, dim=1)
    for t in range(iterations):
        if t < detached:  # truncated backprop: these steps leave no graph behind
            with torch.no_grad():
                q = torch.softmax(logits - _pairwise_energy(q, weights, mu, kernels), dim=1)
        else:
            q = torch.softmax(logits - _MessagePassing.apply(q, weights, mu, kernels), dim=1)
    return q


# ---- the layer -------------------------------------------------------------------------------------------------


def _inverse_softplus(w: float) -> float:
    """raw with softplus(raw) = w, for w > 0: w + log(1 - exp(-w)) (stable for small and large w)."""
    w = torch.tensor(float(w), dtype=torch.float64)
    return float(w + torch.log(-torch.expm1(-w)))


class LearnableCRF(nn.Module):
    """The fully connected CRF as the last layers of a network (CRF-RNN, Zheng et al. 2015), trainable end to end.

    forward(images uint8 [B,3,H,W], logits [B,L,H,W]) -> Q [B,L,H,W] (rows sum to 1), with gradients to the
    logits and to the parameters w1, w2 (positive: `raw_w1`, `raw_w2` through softplus) and mu (the L x L
    label compatibility, Potts by default). The kernel widths sigma_alpha, sigma_beta, sigma_gamma are fixed, as
    in CRF-RNN. Defaults: DeepLab-LargeFOV's kernels and CRF-RNN's T = 5 mean-field iterations for training
    (Zheng et al. use 10 at test time: set `crf.iterations = 10`).

    backprop_iterations: k >= 1 to backpropagate through the last k iterations only (None: all; the module
    docstring gives the memory). filter: "lattice" (permutohedral, any size) or "exact" (O(N^2) reference).
    """

    def __init__(self, num_labels: int, iterations: int = 5, *, w1: float = DEFAULTS["w1"],
                 sigma_alpha: float = DEFAULTS["sigma_alpha"], sigma_beta: float = DEFAULTS["sigma_beta"],
                 w2: float = DEFAULTS["w2"], sigma_gamma: float = DEFAULTS["sigma_gamma"], compatibility=None,
                 backprop_iterations: int | None = None, filter: str = "lattice", max_memory_bytes: int | None = None):
        super().__init__()
        if not isinstance(num_labels, numbers.Integral) or isinstance(num_labels, bool) or num_labels < 2:
            raise ValueError(f"num_labels must be an integer >= 2 (a CRF chooses between labels), got {num_labels!r}")
        # the inference path's checks of iterations, sigmas, weights (same messages)
        _check_params(iterations, w1, sigma_alpha, sigma_beta, w2, sigma_gamma, "symmetric", max_memory_bytes)
        for name, w in (("w1", w1), ("w2", w2)):
            if not w > 0:
                raise ValueError(f"{name} must be > 0: LearnableCRF keeps kernel weights positive (w = softplus(raw)), "
                                 f"so 0 is a limit, not a value; start from a small positive weight, got {w!r}")
        if backprop_iterations is not None and (not isinstance(backprop_iterations, numbers.Integral)
                                                or isinstance(backprop_iterations, bool) or backprop_iterations < 1):
            raise ValueError(f"backprop_iterations must be None (all iterations) or an integer >= 1, "
                             f"got {backprop_iterations!r}")
        if filter not in FILTERS:
            raise ValueError(f"filter must be one of {FILTERS}, got {filter!r}")
        mu = potts(num_labels) if compatibility is None else torch.as_tensor(compatibility, dtype=torch.float32)
        if mu.shape != (num_labels, num_labels):
            raise ValueError(f"compatibility must be [L, L] = [{num_labels}, {num_labels}] (mu(l, l'), Potts: 1 - eye), "
                             f"got shape {tuple(mu.shape)}")
        if not torch.isfinite(mu).all():
            raise ValueError("compatibility (mu) contains NaN or Inf")
        self.num_labels, self.iterations, self.backprop_iterations = int(num_labels), int(iterations), backprop_iterations
        self.sigma_alpha, self.sigma_beta, self.sigma_gamma = float(sigma_alpha), float(sigma_beta), float(sigma_gamma)
        self.filter, self.max_memory_bytes = filter, max_memory_bytes
        self.raw_w1 = nn.Parameter(torch.tensor(_inverse_softplus(w1)))
        self.raw_w2 = nn.Parameter(torch.tensor(_inverse_softplus(w2)))
        self.mu = nn.Parameter(mu.clone().float())

    @property
    def w1(self) -> torch.Tensor:
        return F.softplus(self.raw_w1)

    @property
    def w2(self) -> torch.Tensor:
        return F.softplus(self.raw_w2)

    def extra_repr(self) -> str:
        return (f"num_labels={self.num_labels}, iterations={self.iterations}, w1={float(self.w1.detach()):.4g}, "
                f"sigma_alpha={self.sigma_alpha}, sigma_beta={self.sigma_beta}, w2={float(self.w2.detach()):.4g}, "
                f"sigma_gamma={self.sigma_gamma}, backprop_iterations={self.backprop_iterations}, filter={self.filter!r}")

    def _check_parameters(self) -> None:
        """A diverged optimiser step shows up here, named, instead of as a NaN segmentation."""
        for name, p in (("w1", self.raw_w1), ("w2", self.raw_w2), ("mu (the compatibility)", self.mu)):
            if not torch.isfinite(p.detach()).all():
                raise ValueError(f"LearnableCRF parameter {name} is not finite ({p.detach().flatten()[:4].tolist()}): "
                                 "training diverged; lower the learning rate or clip gradients, and reload a checkpoint")

    def kernels(self, images: torch.Tensor):
        """(k~_1 appearance, k~_2 smoothness) for images uint8 [B,3,H,W]: one lattice each for the whole batch."""
        b, _, h, w = images.shape
        appearance, smoothness, group = crf_features(images, self.sigma_alpha, self.sigma_beta, self.sigma_gamma)
        if self.filter == "exact":
            return ExactKernel(appearance, group), ExactKernel(smoothness, group)
        position = _position_lattice(h, w, self.sigma_gamma, images.device, self.max_memory_bytes)
        return (LatticeKernel(PermutohedralLattice(appearance, group, self.max_memory_bytes)),
                LatticeKernel(position if b == 1 else position.repeat(b)))

    def forward(self, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 RGB [B,3,H,W], got dtype {images.dtype} and shape {tuple(images.shape)}")
        if logits.ndim != 4 or logits.shape[1] != self.num_labels or not logits.is_floating_point():
            raise ValueError(f"logits must be floating point [B,{self.num_labels},H,W] (the network's scores, before "
                             f"softmax), got dtype {logits.dtype} and shape {tuple(logits.shape)}")
        if images.shape[0] != logits.shape[0] or images.shape[2:] != logits.shape[2:]:
            raise ValueError(f"images {tuple(images.shape)} and logits {tuple(logits.shape)} differ in size; upsample the "
                             "logits to the image size first (bilinear, as DeepLab does)")
        if logits.shape[2] == 0 or logits.shape[3] == 0:
            raise ValueError("the image is empty; a CRF needs at least one pixel")
        if not torch.isfinite(logits.detach()).all():  # detached: isfinite would save the logits for backward
            raise ValueError("logits contain NaN or Inf; check the network's output (a diverged training run?)")
        self._check_parameters()
        b, num_labels, h, w = logits.shape
        if self.iterations and self.filter == "lattice":
            check_lattice_fits(b * h * w, 5, num_labels, logits.device, self.max_memory_bytes)
        dtype = logits.dtype if logits.dtype in (torch.float32, torch.float64) else torch.float32  # sparse products
        x = logits.to(dtype).permute(0, 2, 3, 1).reshape(-1, num_labels)
        weights = torch.stack([self.w1, self.w2]).to(dtype)
        kernels = self.kernels(images.to(logits.device)) if self.iterations else ()
        with torch.autocast(x.device.type, enabled=False):  # under AMP too: half has no sparse products on CPU
            q = mean_field_rnn(x, kernels, weights, self.mu.to(dtype), self.iterations, self.backprop_iterations)
        return q.view(b, h, w, num_labels).permute(0, 3, 1, 2).contiguous().to(logits.dtype)


def lattice_bytes(kernel: LatticeKernel, dtype: torch.dtype = torch.float32) -> int:
    """Bytes held by one kernel for backprop: its lattice's index arrays and its sparse matrices in `dtype`."""
    lat = kernel.lattice
    tensors = [lat.offset, lat.barycentric, lat.order, lat.crow, kernel.scale] + [t for p in lat.neighbours for t in p]
    splat, blurs, slice_, s = kernel.matrices(dtype)
    for m in (splat, slice_, *blurs):
        tensors += [m.crow_indices(), m.col_indices(), m.values()]
    return sum(t.numel() * t.element_size() for t in tensors + [s])


def stored_bytes(num_pixels: int, num_labels: int, iterations: int, backprop_iterations: int | None = None,
                 dtype: torch.dtype = torch.float32) -> int:
    """Bytes of [N, L] tensors that LearnableCRF keeps for backward: Q_0 .. Q_T, or the last k + 1 when truncated.

    The lattices come on top (once per image, whatever T: `lattice_bytes`).
    """
    kept = iterations if backprop_iterations is None else min(backprop_iterations, iterations)
    return (kept + 1) * num_pixels * num_labels * torch.empty((), dtype=dtype).element_size()
