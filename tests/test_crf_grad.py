"""dlcore.crf.learnable: gradients through mean-field (CRF as RNN) checked numerically, its memory, its parameters."""

import matplotlib.cbook
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.func import functional_call

from dlcore.crf import DenseCRF, dense_crf
from dlcore.crf.learnable import LearnableCRF, mean_field_rnn, potts, stored_bytes
from dlcore.crf.meanfield import PROB_FLOOR

H, W, L, T = 5, 6, 3, 3  # gradcheck size: 30 pixels, 3 labels, 3 iterations
# kernel widths that make both kernels couple most pixel pairs of a 6 x 5 image (the papers' suit a photograph)
SMALL = dict(sigma_alpha=3.0, sigma_beta=60.0, sigma_gamma=1.5)


@pytest.fixture(autouse=True)
def one_thread():
    """One thread whatever other test modules set at import (test_predict sets 2): the many tiny sparse products
    of gradcheck stall with two threads when another process holds a core (measured: minutes instead of seconds)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def photo(h: int, w: int) -> np.ndarray:
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as im:
        return np.array(im.convert("RGB").resize((w, h), Image.BILINEAR))


def tiny_batch(b: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, 3, H, W), generator=g, dtype=torch.uint8)
    logits = 2 * torch.randn(b, L, H, W, generator=g, dtype=torch.float64)
    return images, logits


def random_mu(seed: int = 1) -> torch.Tensor:
    """A generic compatibility (not Potts, not symmetric), so every entry's gradient is exercised."""
    g = torch.Generator().manual_seed(seed)
    return potts(L).double() + 0.3 * torch.randn(L, L, generator=g, dtype=torch.float64)


# ---- gradcheck: the analytic backward (filtering the gradient) against finite differences ----------------------


@pytest.mark.parametrize("filter", ["lattice", "exact"])
def test_gradcheck_unaries_weights_compatibility(filter):
    images, logits = tiny_batch()
    crf = LearnableCRF(L, T, filter=filter, **SMALL)
    kernels = crf.kernels(images)
    x = logits.permute(0, 2, 3, 1).reshape(-1, L).clone().requires_grad_()
    w1 = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    w2 = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    mu = random_mu().requires_grad_()
    fn = lambda x, w1, w2, mu: mean_field_rnn(x, kernels, torch.stack([w1, w2]), mu, T)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w1, w2, mu), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("filter", ["lattice", "exact"])
def test_gradcheck_through_the_module(filter):
    """The layer as a user trains it: a batch of 2, [B,L,H,W] layout, softplus weights, Potts mu at the start."""
    images, logits = tiny_batch(b=2)
    crf = LearnableCRF(L, 2, filter=filter, **SMALL).double()
    names = ["raw_w1", "raw_w2", "mu"]
    params = tuple(getattr(crf, n).detach().clone().requires_grad_() for n in names)

    def fn(logits, *params):
        return functional_call(crf, dict(zip(names, params)), (images, logits))

    assert torch.autograd.gradcheck(fn, (logits.clone().requires_grad_(), *params), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_lattice_backward_is_the_exact_adjoint():
    """k~^T runs the blurs in reverse order; the blurs do not commute on a sparse lattice, so it matters."""
    images, _ = tiny_batch()
    for kernel in LearnableCRF(L, T, **SMALL).kernels(images):
        eye = torch.eye(H * W, dtype=torch.float64)
        k, kt = kernel(eye), kernel.transpose(eye)  # dense [N, N] matrices of the filter and of its transpose
        torch.testing.assert_close(kt, k.T, rtol=0, atol=1e-14)
        # the forward filter is not exactly symmetric: its own order in backward would give a wrong gradient
        if kernel.lattice.d > 2:
            assert (k - k.T).abs().max() > 1e-4


# ---- the same Q as the inference path -----------------------------------------------------------------------------


def test_potts_layer_gives_dense_crf_q():
    """With Potts mu, logits = log(probs) reproduces dense_crf (float32 rounding apart), which this module leaves alone."""
    image = photo(40, 48)
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(F.interpolate(torch.randn(1, 4, 4, 4, generator=g) * 3, size=(40, 48), mode="bilinear"), 1)
    settings = dict(w1=4.0, sigma_alpha=20.0, sigma_beta=13.0, w2=3.0, sigma_gamma=3.0)
    ref = dense_crf(image, probs[0].numpy(), 5, **settings)
    crf = LearnableCRF(4, 5, **settings)
    q = crf(torch.from_numpy(image).permute(2, 0, 1)[None], torch.log(probs.clamp_min(PROB_FLOOR)))[0]
    assert np.abs(q.detach().numpy() - ref).max() < 1e-6
    # and a batch of two through DenseCRF, with its lattice grouping
    images = torch.from_numpy(np.stack([image, image[::-1].copy()])).permute(0, 3, 1, 2)
    batch = torch.cat([probs, probs.flip(3)])
    ref = DenseCRF(5, **settings)(images, batch)
    q = crf(images, torch.log(batch.clamp_min(PROB_FLOOR)))
    assert (q.detach() - ref).abs().max() < 1e-6


def test_inference_path_stays_without_graph():
    """dense_crf / DenseCRF stay inference-only: without a gradient request, no graph and nothing saved."""
    images, logits = tiny_batch()
    probs = torch.softmax(logits.float(), 1)
    q = DenseCRF(T, **SMALL)(images, probs)
    assert not q.requires_grad and q.grad_fn is None
    with torch.no_grad():
        assert DenseCRF(T, **SMALL)(images, probs.requires_grad_()).grad_fn is None


@pytest.mark.parametrize("path", ["module", "function"])
def test_gradient_request_on_inference_path_says_how(path):
    """probs that require grad: the same Q bit for bit, and backward names LearnableCRF instead of a silent no-op."""
    images, logits = tiny_batch()
    probs = torch.softmax(logits.float(), 1)
    if path == "module":
        run = lambda p: DenseCRF(T, **SMALL)(images, p)  # noqa: E731
    else:
        run = lambda p: dense_crf(images[0].permute(1, 2, 0), p[0], T, **SMALL)  # noqa: E731
    plain = run(probs)
    asked = run(probs.clone().requires_grad_())
    assert asked.requires_grad and torch.equal(asked.detach(), plain)
    with pytest.raises(RuntimeError, match="inference-only.*LearnableCRF"):
        torch.log(asked).sum().backward()


# ---- memory: Q_t per iteration, truncated backprop ------------------------------------------------------------------


def saved_bytes(fn) -> int:
    """Bytes of distinct tensors autograd saves for backward while `fn` runs."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("k", [None, 1, 2])
def test_only_q_is_stored_per_iteration(k):
    image = torch.from_numpy(photo(24, 32)).permute(2, 0, 1)[None]
    crf = LearnableCRF(5, 4, backprop_iterations=k, sigma_alpha=20.0, sigma_beta=13.0)
    logits = torch.randn(1, 5, 24, 32, requires_grad=True)
    n = saved_bytes(lambda: crf(image, logits))
    expected = stored_bytes(24 * 32, 5, 4, k)
    assert expected <= n < expected + 1024  # + w, mu and the softplus inputs: a few scalars
    assert stored_bytes(24 * 32, 5, 4, k) == (4 if k is None else k) * 24 * 32 * 5 * 4 + 24 * 32 * 5 * 4


def test_memory_figure_in_the_docstring():
    """500 x 375 x 21 labels x 5 iterations: 6 x 15.75 MB = 94.5 MB; truncated to the last iteration: 31.5 MB."""
    assert stored_bytes(500 * 375, 21, 5) == 94_500_000
    assert stored_bytes(500 * 375, 21, 5, backprop_iterations=1) == 31_500_000
    import dlcore.crf.learnable as module

    assert "94.5 MB" in module.__doc__ and "31.5 MB" in module.__doc__


def test_truncated_backprop_is_the_gradient_of_the_last_k_steps():
    images, logits = tiny_batch()
    crf = LearnableCRF(L, 4, **SMALL).double()
    kernels = crf.kernels(images)
    x = logits.permute(0, 2, 3, 1).reshape(-1, L).clone().requires_grad_()
    weights, mu = torch.stack([crf.w1, crf.w2]).detach(), crf.mu.detach()
    probe = torch.randn(H * W, L, dtype=torch.float64)

    def grad(q_fn):
        (g,) = torch.autograd.grad((q_fn() * probe).sum(), x)
        return g

    full = grad(lambda: mean_field_rnn(x, kernels, weights, mu, 4))
    torch.testing.assert_close(grad(lambda: mean_field_rnn(x, kernels, weights, mu, 4, backprop_iterations=4)), full)
    truncated = grad(lambda: mean_field_rnn(x, kernels, weights, mu, 4, backprop_iterations=1))

    def last_step_only():
        q3 = mean_field_rnn(x, kernels, weights, mu, 3).detach()  # Q_3 held fixed
        return torch.softmax(x - (sum(w * k(q3) for w, k in zip(weights, kernels)) @ mu.T), 1)

    torch.testing.assert_close(truncated, grad(last_step_only))
    assert not torch.allclose(truncated, full)


# ---- parameters: positive weights, finite values, clear errors -------------------------------------------------------


def test_huge_steps_keep_weights_positive():
    images, logits = tiny_batch(seed=3)
    target = torch.randint(0, L, (1, H, W), generator=torch.Generator().manual_seed(4))
    crf = LearnableCRF(L, T, w1=0.05, w2=0.05, **SMALL)
    opt = torch.optim.SGD(crf.parameters(), lr=1e4)  # a raw weight would go far below 0
    for _ in range(3):
        opt.zero_grad()
        F.nll_loss(torch.log(crf(images, logits.float())), target).backward()
        opt.step()
        assert crf.w1.item() >= 0 and crf.w2.item() >= 0
    assert crf.raw_w1.item() < -1 or crf.raw_w2.item() < -1  # the steps did push a weight towards 0


def test_training_lowers_the_loss_and_learns_mu():
    images, logits = tiny_batch(seed=3)
    target = torch.randint(0, L, (1, H, W), generator=torch.Generator().manual_seed(4))
    crf = LearnableCRF(L, T, **SMALL)
    opt = torch.optim.Adam(crf.parameters(), lr=0.1)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = F.nll_loss(torch.log(crf(images, logits.float())), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not torch.equal(crf.mu.detach(), potts(L))


@pytest.mark.parametrize("name", ["raw_w1", "raw_w2", "mu"])
def test_non_finite_parameter_is_named(name):
    images, logits = tiny_batch()
    crf = LearnableCRF(L, T, **SMALL)
    with torch.no_grad():
        getattr(crf, name).view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=name.removeprefix("raw_") + ".*not finite"):
        crf(images, logits.float())


@pytest.mark.parametrize("kwargs, match", [
    (dict(w1=0.0), "w1 must be > 0"),
    (dict(w2=-3.0), "w2 must be > 0"),
    (dict(w1=float("inf")), "w1 must be a finite"),
    (dict(sigma_alpha=0.0), "sigma_alpha"),
    (dict(backprop_iterations=0), "backprop_iterations"),
    (dict(compatibility=torch.ones(2, 2)), r"compatibility must be \[L, L\]"),
    (dict(compatibility=torch.full((L, L), float("nan"))), "compatibility"),
    (dict(filter="gauss"), "filter must be one of"),
])
def test_bad_settings_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LearnableCRF(L, T, **kwargs)


def test_bad_inputs_refused():
    images, logits = tiny_batch()
    crf = LearnableCRF(L, T, **SMALL)
    with pytest.raises(ValueError, match="images must be uint8"):
        crf(images.float(), logits)
    with pytest.raises(ValueError, match="logits must be floating point"):
        crf(images, logits[:, :2])
    with pytest.raises(ValueError, match="differ in size"):
        crf(images, logits[..., :4])
    bad = logits.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="logits contain NaN"):
        crf(images, bad)
