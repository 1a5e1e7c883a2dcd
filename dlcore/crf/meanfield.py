"""Mean-field inference in the fully connected CRF (Krähenbühl & Koltun, NIPS 2011), as pydensecrf runs it.

The energy (DeepLab v1, Sec. 4.2; DeepLab v2, Sec. 3.3) over labels x_i of all pixels i:

    E(x) = sum_i U_i(x_i) + sum_{i<j} mu(x_i, x_j) [ w1 exp(-|p_i-p_j|^2 / 2 sigma_alpha^2 - |I_i-I_j|^2 / 2 sigma_beta^2)
                                                   + w2 exp(-|p_i-p_j|^2 / 2 sigma_gamma^2) ]

with U_i = -log P(x_i) from the DCNN and the Potts compatibility mu(a, b) = [a != b]. Mean-field keeps a
factorised Q and repeats (Krähenbühl & Koltun 2011, Algorithm 1):

    Q_i(l) <- softmax_l( -U_i(l) + sum_k w_k sum_j k~_k(i, j) Q_j(l) )

where k~_k is kernel k after normalisation; the Potts penalty on the other labels equals this reward on
label l up to a per-pixel constant that the softmax cancels. Like pydensecrf (and unlike the paper's
sum over j != i) the lattice filter includes the pixel itself; matching it is what parity needs.
"""

from __future__ import annotations

import torch

from dlcore.crf.lattice import FusedFilter, PermutohedralLattice

NORMALIZATIONS = ("symmetric", "before", "after", "none")
# pydensecrf.utils.unary_from_softmax clips probabilities here before the log, so U stays finite.
PROB_FLOOR = 1e-5


def kernel_scales(lattice: PermutohedralLattice, normalization: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel scales (before, after) the raw lattice filter, as pydensecrf's DenseKernel normalises.

    n_i = K 1 (the kernel's total weight at pixel i); symmetric: n^-1/2 K n^-1/2 (default, pydensecrf's
    NORMALIZE_SYMMETRIC); before: K n^-1; after: n^-1 K; none: K as is.
    """
    norm = lattice.total_weight()
    ones = torch.ones_like(norm)
    if normalization == "symmetric":
        s = 1.0 / torch.sqrt(norm + 1e-20)
        return s, s
    if normalization == "before":
        return 1.0 / (norm + 1e-20), ones
    if normalization == "after":
        return ones, 1.0 / (norm + 1e-20)
    if normalization == "none":
        return ones, ones
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def pairwise_scales(lattices, weights, normalization: str) -> tuple[list, list]:
    """Per-pixel scales (pre_k, post_k) with w_k folded in, so that sum_k post_k K_k(pre_k Q) = sum_k w_k k~_k Q."""
    pre, post = [], []
    for lattice, w in zip(lattices, weights):
        a, b = kernel_scales(lattice, normalization)
        pre.append(a)
        post.append(b * w)
    return pre, post


def pairwise_filter(lattices, weights, normalization: str) -> FusedFilter:
    """The message passing step as one operator: Q [N, L] -> sum_k w_k k~_k Q (the Potts reward)."""
    return FusedFilter(lattices, *pairwise_scales(lattices, weights, normalization))


def free_energy_terms(q: torch.Tensor, unary: torch.Tensor, message: torch.Tensor) -> dict:
    """The mean-field objective at Q, as pydensecrf's klDivergence: KL(Q || P) = energy - entropy (+ log Z).

    energy = E_Q[E] in pydensecrf's convention (sum U Q - sum Q * sum_k w_k k~ Q, the Potts penalty written
    as a reward, so it can be negative); entropy = -sum Q log Q. float64 sums, as pydensecrf.
    """
    entropy = -(q * torch.log(q.clamp_min(1e-20))).sum(dtype=torch.float64)
    energy = (unary * q).sum(dtype=torch.float64) - (q * message).sum(dtype=torch.float64)
    return {"kl": float(energy - entropy), "energy": float(energy), "entropy": float(entropy)}


def kl_divergence(q: torch.Tensor, unary: torch.Tensor, message: torch.Tensor) -> float:
    """KL(Q || P) up to log Z, as pydensecrf's klDivergence: sum Q log Q + sum U Q - sum Q (sum_k w_k k~ Q)."""
    return free_energy_terms(q, unary, message)["kl"]


def mean_field(unary: torch.Tensor, pairwise: FusedFilter, iterations: int, trace: list | None = None) -> torch.Tensor:
    """Run `iterations` mean-field updates from Q0 = softmax(-U); unary [N, L] float32 -> Q [N, L].

    With `trace` (a list), one dict per state Q_0..Q_T is appended: iteration, q, kl, energy, entropy.
    Recording costs one extra filtering (for the last state's KL), nothing otherwise.
    """
    q = torch.softmax(-unary, dim=1)
    for t in range(iterations):
        message = pairwise(q)
        if trace is not None:
            trace.append({"iteration": t, "q": q, **free_energy_terms(q, unary, message)})
        q = torch.softmax(message.sub_(unary), dim=1)  # in place: message is a fresh buffer
    if trace is not None:
        trace.append({"iteration": iterations, "q": q, **free_energy_terms(q, unary, pairwise(q))})
    return q
