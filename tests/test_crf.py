"""dlcore.crf: lattice against the exact filter, mean-field against pydensecrf, bad input refused clearly."""

from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dlcore.crf import DenseCRF, PermutohedralLattice, crf_features, dense_crf, exact_gaussian_filter, kernels_at

PEER = Path(__file__).resolve().parents[2] / "shared" / "peer"
EXAMPLES = PEER / "pydensecrf_examples"
VOC = PEER / "voc_samples" / "keras-fcn"


def photo(h: int, w: int) -> np.ndarray:
    """matplotlib's grace_hopper.jpg resized to [h, w, 3] uint8 (a real photograph shipped by a dependency)."""
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as im:
        return np.array(im.convert("RGB").resize((w, h), Image.BILINEAR))


def coarse_probs(labels: np.ndarray, num_labels: int, stride: int = 16) -> np.ndarray:
    """Network-like probabilities: one-hot labels average-pooled by `stride`, upsampled bilinearly, softened."""
    t = torch.from_numpy(labels.astype(np.int64)).clamp(max=num_labels - 1)
    onehot = F.one_hot(t, num_labels).permute(2, 0, 1).float()[None]
    coarse = F.interpolate(F.avg_pool2d(onehot, stride, ceil_mode=True), size=labels.shape, mode="bilinear", align_corners=False)
    return torch.softmax(torch.log(coarse.clamp_min(1e-3)), 1)[0].numpy()


def smooth_random_probs(h: int, w: int, num_labels: int, seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    logits = F.interpolate(torch.randn(1, num_labels, h // 16 + 1, w // 16 + 1, generator=g) * 3, size=(h, w), mode="bilinear", align_corners=False)
    return torch.softmax(logits, 1)[0].numpy()


# ---- the lattice approximates the exact Gaussian filter ------------------------------------------------------


@pytest.mark.parametrize("kernel", ["appearance", "smoothness"])
def test_lattice_matches_exact_filter(kernel):
    image = torch.from_numpy(photo(40, 48)).permute(2, 0, 1)[None]
    appearance, smoothness, _ = crf_features(image, sigma_alpha=8.0, sigma_beta=13.0, sigma_gamma=3.0)
    f = appearance if kernel == "appearance" else smoothness
    values = torch.from_numpy(smooth_random_probs(40, 48, 3)).reshape(3, -1).T.contiguous()
    lattice = PermutohedralLattice(f)
    ones = torch.ones(f.shape[0], 1)
    approx = lattice.filter(values) / lattice.filter(ones)  # normalised responses: the lattice's scale drops out
    exact = exact_gaussian_filter(f, values) / exact_gaussian_filter(f, ones)
    rel = float((approx - exact).norm() / exact.norm())
    # the lattice is an approximation (Adams et al. 2010, Sec. 5): a few per cent on 5-D features
    assert rel < 0.07, f"lattice vs exact relative error {rel:.3f}"


def test_exact_filter_is_a_gaussian():
    f = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    out = exact_gaussian_filter(f, torch.eye(3))
    expected = torch.exp(-0.5 * torch.cdist(f.double(), f.double()) ** 2).float()
    torch.testing.assert_close(out, expected)


def test_kernels_at_equals_filtering_a_delta():
    image = photo(12, 16)
    appearance, smoothness = kernels_at(image, 5, 7, sigma_alpha=6.0, sigma_beta=20.0, sigma_gamma=2.0)
    f_app, f_smooth, _ = crf_features(torch.from_numpy(image).permute(2, 0, 1)[None], 6.0, 20.0, 2.0)
    delta = torch.zeros(12 * 16, 1, dtype=torch.float64)
    delta[5 * 16 + 7] = 1
    np.testing.assert_allclose(exact_gaussian_filter(f_app, delta).numpy().reshape(12, 16), appearance, atol=1e-6)  # features are float32
    np.testing.assert_allclose(exact_gaussian_filter(f_smooth, delta).numpy().reshape(12, 16), smoothness, atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        kernels_at(image, 12, 0, sigma_alpha=6.0, sigma_beta=20.0, sigma_gamma=2.0)


def test_batch_lattice_keeps_images_apart():
    images = torch.from_numpy(np.stack([photo(24, 32), photo(24, 32)[::-1].copy()])).permute(0, 3, 1, 2)
    probs = torch.from_numpy(np.stack([smooth_random_probs(24, 32, 4, 1), smooth_random_probs(24, 32, 4, 2)]))
    batched = DenseCRF(5, sigma_alpha=20.0)(images, probs)
    for i in range(2):
        single = dense_crf(images[i].permute(1, 2, 0), probs[i], 5, sigma_alpha=20.0)
        torch.testing.assert_close(batched[i], single, atol=1e-5, rtol=0)


def test_a_sweep_over_w1_is_each_w1_on_its_own():
    """`sweep_w1` builds the lattices once and gives, for every w1, exactly what a CRF with that w1 gives (the CRF
    search's inner loop); a w1 out of range is refused as the constructor refuses it."""
    images = torch.from_numpy(photo(40, 56)).permute(2, 0, 1)[None]
    probs = torch.from_numpy(smooth_random_probs(40, 56, 5))[None]
    swept = DenseCRF(5, w1=3.0, sigma_alpha=20.0, sigma_beta=6.0).sweep_w1(images, probs, [0.0, 3.0, 12.0])
    for w1, q in zip([0.0, 3.0, 12.0], swept):
        assert torch.equal(q, DenseCRF(5, w1=w1, sigma_alpha=20.0, sigma_beta=6.0)(images, probs))
    with pytest.raises(ValueError, match="w1"):
        DenseCRF(5).sweep_w1(images, probs, [3.0, float("nan")])


# ---- API ------------------------------------------------------------------------------------------------------


def test_types_and_devices_follow_probs():
    image = photo(20, 30)
    probs = smooth_random_probs(20, 30, 3)
    q_np = dense_crf(image, probs, 3)
    q_t = dense_crf(torch.from_numpy(image), torch.from_numpy(probs), 3)
    assert isinstance(q_np, np.ndarray) and q_np.shape == probs.shape and q_np.dtype == probs.dtype
    assert isinstance(q_t, torch.Tensor) and q_t.device == torch.device("cpu")
    np.testing.assert_allclose(q_np, q_t.numpy(), atol=1e-6)
    np.testing.assert_allclose(q_np.sum(0), 1.0, atol=1e-5)


def test_zero_iterations_returns_input():
    probs = smooth_random_probs(10, 12, 3)
    np.testing.assert_array_equal(dense_crf(photo(10, 12), probs, 0), probs)


def test_trace_records_kl_and_crf_lowers_it():
    trace = []
    dense_crf(photo(40, 48), smooth_random_probs(40, 48, 4), 5, trace=trace)
    assert [t["iteration"] for t in trace] == list(range(6))
    assert all(np.isfinite(t["kl"]) for t in trace)
    assert trace[-1]["kl"] < trace[0]["kl"], "mean-field should lower the KL divergence from Q0"


def test_trace_q_follows_the_input_kind_and_ends_at_the_result():
    probs = smooth_random_probs(16, 20, 3)
    trace = []
    q = dense_crf(torch.from_numpy(photo(16, 20)), torch.from_numpy(probs), 3, trace=trace)
    assert all(isinstance(t["q"], torch.Tensor) and t["q"].shape == (3, 16, 20) for t in trace)
    torch.testing.assert_close(trace[-1]["q"], q)
    torch.testing.assert_close(trace[0]["q"], torch.from_numpy(probs), atol=1e-5, rtol=0)  # Q0 = softmax(log P) = P
    assert all(abs(t["kl"] - (t["energy"] - t["entropy"])) < 1e-6 * max(1.0, abs(t["kl"])) for t in trace)


def test_pairwise_weights_smooth_the_labels():
    probs = smooth_random_probs(40, 48, 4)
    noisy = np.clip(probs + np.random.default_rng(0).uniform(0, 0.5, probs.shape), 0, None).astype(np.float32)
    noisy /= noisy.sum(0, keepdims=True)
    changes = lambda q: int((np.diff(q.argmax(0), axis=1) != 0).sum())  # noqa: E731
    q = dense_crf(photo(40, 48), noisy, 5, w1=10.0, w2=5.0)
    assert changes(q) < changes(noisy)


# ---- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p, im: (im, np.where(p > 0.5, np.nan, p)), "NaN"),
        (lambda p, im: (im, p - 0.5), "negative"),
        (lambda p, im: (im, p * 2), "sum to 1"),
        (lambda p, im: (im[:-1], p), "differ in size"),
        (lambda p, im: (im.astype(np.float32) / 255, p), "uint8"),
        (lambda p, im: (im[..., :1], p), "RGB"),
        (lambda p, im: (im, np.ones_like(p[:1])), "at least 2 labels"),
        (lambda p, im: (im, p[0]), r"\[L,H,W\]"),
    ],
    ids=["nan", "negative", "not-normalised", "size", "float-image", "grey-image", "one-label", "2d-probs"],
)
def test_bad_input_raises_clear_error(make, message):
    image, probs = make(smooth_random_probs(12, 16, 3), photo(12, 16))
    with pytest.raises(ValueError, match=message):
        dense_crf(image, probs, 2)


@pytest.mark.parametrize("kwargs, message", [
    ({"iterations": -1}, "iterations"), ({"sigma_alpha": 0.0}, "sigma_alpha"),
    ({"normalization": "l2"}, "normalization"), ({"w1": float("nan")}, "w1"),
])
def test_bad_parameters_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dense_crf(photo(8, 8), smooth_random_probs(8, 8, 2), **kwargs)


def test_lattice_too_big_is_refused_before_allocating():
    with pytest.raises(ValueError, match=r"GiB.*available"):
        dense_crf(photo(64, 64), smooth_random_probs(64, 64, 3), 2, max_memory_bytes=1 << 20)


# ---- parity with pydensecrf -----------------------------------------------------------------------------------

dcrf = pytest.importorskip("pydensecrf.densecrf")
MODES = {"symmetric": "NORMALIZE_SYMMETRIC", "before": "NORMALIZE_BEFORE", "after": "NORMALIZE_AFTER", "none": "NO_NORMALIZATION"}


def pydensecrf_q(image, probs, iterations, w1, sigma_alpha, sigma_beta, w2, sigma_gamma, normalization="symmetric"):
    """pydensecrf's DenseCRF2D with the same unary (-log p, clipped at 1e-5 as its unary_from_softmax)."""
    from pydensecrf.utils import unary_from_softmax

    num_labels, h, w = probs.shape
    mode = getattr(dcrf, MODES[normalization])
    d = dcrf.DenseCRF2D(w, h, num_labels)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32))))
    d.addPairwiseGaussian(sxy=sigma_gamma, compat=w2, normalization=mode)
    d.addPairwiseBilateral(sxy=sigma_alpha, srgb=sigma_beta, rgbim=np.ascontiguousarray(image), compat=w1, normalization=mode)
    return np.array(d.inference(iterations)).reshape(num_labels, h, w)


@pytest.mark.parametrize("normalization", list(MODES))
def test_normalization_modes_match_pydensecrf(normalization):
    image, probs = photo(48, 64), smooth_random_probs(48, 64, 5)
    params = dict(iterations=5, w1=4.0, sigma_alpha=30.0, sigma_beta=10.0, w2=3.0, sigma_gamma=3.0)
    ref = pydensecrf_q(image, probs, normalization=normalization, **params)
    q = dense_crf(image, probs, normalization=normalization, **params)
    assert np.abs(q - ref).max() <= 1e-3


def voc_size_photo():
    """A 500 x 375-ish photograph with its labels: a VOC val pair when present, else grace_hopper."""
    if VOC.is_dir():
        name = (VOC / "val_ids.txt").read_text().split()[0]
        image = np.array(Image.open(VOC / "JPEGImages" / f"{name}.jpg").convert("RGB"))
        labels = np.array(Image.open(VOC / "SegmentationClass" / f"{name}.png"))
        return image, np.where(labels == 255, 0, labels)
    image = photo(375, 500)
    return image, (image.mean(2) // 13).astype(np.int64) % 21  # brightness bands as stand-in labels


def test_parity_with_pydensecrf_voc_size():
    image, labels = voc_size_photo()
    probs = coarse_probs(labels, 21)
    params = dict(iterations=10, w1=4.0, sigma_alpha=121.0, sigma_beta=5.0, w2=3.0, sigma_gamma=3.0)
    ref = pydensecrf_q(image, probs, **params)
    q = dense_crf(image, probs, **params)
    assert np.abs(q - ref).max() <= 1e-3
    assert (q.argmax(0) == ref.argmax(0)).mean() >= 0.999


def example_probs(anno_rgb: np.ndarray, gt_prob: float = 0.7):
    """pydensecrf's examples/inference.py unary: gt_prob on the annotated colour, black = unknown (uniform)."""
    code = anno_rgb[..., 0].astype(np.uint32) | (anno_rgb[..., 1].astype(np.uint32) << 8) | (anno_rgb[..., 2].astype(np.uint32) << 16)
    colours, labels = np.unique(code, return_inverse=True)
    labels = labels.reshape(code.shape)
    unknown = colours[0] == 0
    if unknown:
        colours, labels = colours[1:], labels - 1
    n = len(colours)
    probs = np.full((n,) + code.shape, (1 - gt_prob) / (n - 1), np.float32)
    known = labels >= 0
    probs[:, known] = np.where(np.arange(n)[:, None] == labels[known][None], gt_prob, probs[:, known])
    probs[:, ~known] = 1.0 / n
    palette = np.stack([colours & 0xFF, (colours >> 8) & 0xFF, (colours >> 16) & 0xFF], 1).astype(np.uint8)
    return probs, palette


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="pydensecrf's examples not present beside the checkout")
@pytest.mark.parametrize("n", [1, 2, 3])
def test_pydensecrf_examples_reproduced(n):
    image = np.array(Image.open(EXAMPLES / f"im{n}.png").convert("RGB"))
    anno = np.array(Image.open(EXAMPLES / f"anno{n}.png").convert("RGB"))
    expected = np.array(Image.open(EXAMPLES / f"out{n}.png").convert("RGB"))
    probs, palette = example_probs(anno)
    q = dense_crf(image, probs, 5, w1=10.0, sigma_alpha=80.0, sigma_beta=13.0, w2=3.0, sigma_gamma=3.0)
    agree = (palette[q.argmax(0)] == expected).all(-1).mean()
    assert agree >= 0.995, f"only {agree:.4f} of pixels equal to out{n}.png"


TRITON_KERNELS_ON_CPU = '''
import os, sys
os.environ["TRITON_INTERPRET"] = "1"  # Triton's interpreter runs the CUDA kernels on CPU tensors
import torch
from dlcore.crf import cuda, crf_features, PermutohedralLattice
from dlcore.crf.lattice import FusedFilter
from dlcore.crf.meanfield import mean_field, pairwise_scales
cuda.PIECE, cuda.FEW = 3, 2  # many pieces per row, as in a large image's flat regions
g = torch.Generator().manual_seed(0)
images = torch.randint(0, 256, (2, 3, 10, 12), dtype=torch.uint8, generator=g)
images[:, :, :, :6] = 40  # a flat region: long splat rows
appearance, smoothness, group = crf_features(images, 8.0, 20.0, 2.0)
lattices = [PermutohedralLattice(appearance, group), PermutohedralLattice(smoothness, group)]
pairwise = FusedFilter(lattices, *pairwise_scales(lattices, [4.0, 3.0], "symmetric"))
unary = -torch.log(torch.rand(appearance.shape[0], 5, generator=g).softmax(1))
expected = mean_field(unary, pairwise, 3)
rows = pairwise.splat_crow[1:] - pairwise.splat_crow[:-1]
assert int(rows.max()) > cuda.PIECE * cuda.FEW and int(rows.min()) <= cuda.PIECE  # both ways of summing pieces
got = cuda.mean_field(unary, pairwise, 3)
print(float((got - expected).abs().max()))
'''


def test_triton_mean_field_kernels_equal_the_sparse_path():
    """dlcore.crf.cuda's kernels, run by Triton's interpreter on the CPU (the GPU runs are in test_gpu.py)."""
    import subprocess
    import sys

    pytest.importorskip("triton")
    out = subprocess.run([sys.executable, "-c", TRITON_KERNELS_ON_CPU], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.split()[-1]) < 1e-5


def test_repeated_position_lattice_equals_the_batched_build():
    """DenseCRF builds the smoothness lattice once per image size and repeats it over the batch."""
    _, smoothness, group = crf_features(torch.zeros(3, 3, 9, 11, dtype=torch.uint8), 121.0, 5.0, 3.0)
    batched = PermutohedralLattice(smoothness, group)
    repeated = PermutohedralLattice(smoothness[:99]).repeat(3)
    assert repeated.num_vertices == batched.num_vertices and repeated.num_points == batched.num_points
    for name in ("offset", "barycentric", "order", "crow"):
        assert torch.equal(getattr(repeated, name), getattr(batched, name)), name
    for a, b in zip(repeated.neighbours, batched.neighbours):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
