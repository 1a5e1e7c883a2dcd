"""Speed of dlcore.crf.dense_crf against pydensecrf2, and exact O(N^2) vs lattice O(N) filtering.

    python benchmarks/crf.py                      # CPU: 500x375, 21 labels, 10 iterations, ratio vs pydensecrf2
    python benchmarks/crf.py --device cuda        # GPU: ms/image, images/s at batch 16, peak memory
    python benchmarks/crf.py --scaling benchmarks/crf_scaling.png   # time vs image size, exact vs lattice
    python benchmarks/crf.py --phases --device cuda --batch 16      # where the time goes
    python benchmarks/crf.py --compare [--load]   # the fair comparison (issue 14), see crf_compare.py

Times are medians over --repeats runs, lattice build included (as pydensecrf's includes its own).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import matplotlib.cbook
import numpy as np
import torch
import torch.nn.functional as F

from dlcore.crf import DenseCRF, PermutohedralLattice, crf_features, dense_crf, exact_gaussian_filter
from dlcore.viz import savefig

SETTINGS = dict(iterations=10, w1=4.0, sigma_alpha=121.0, sigma_beta=5.0, w2=3.0, sigma_gamma=3.0)


def photo(h: int, w: int) -> np.ndarray:
    from PIL import Image

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as im:
        return np.array(im.convert("RGB").resize((w, h), Image.BILINEAR))


def network_like_probs(h: int, w: int, num_labels: int, seed: int = 0) -> np.ndarray:
    """Smooth random logits at stride 16, upsampled bilinearly: a DCNN-like coarse score map."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, num_labels, h // 16 + 1, w // 16 + 1, generator=g) * 3
    return torch.softmax(F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False), 1)[0].numpy()


def batch_inputs(args, batch: int, device: torch.device):
    """The photograph and its network-like probabilities, `batch` copies: uint8 [B,3,H,W], [B,L,H,W] on `device`."""
    image = torch.from_numpy(photo(args.height, args.width)).permute(2, 0, 1)[None]
    probs = torch.from_numpy(network_like_probs(args.height, args.width, args.labels))[None]
    return (image.expand(batch, -1, -1, -1).contiguous().to(device),
            probs.expand(batch, -1, -1, -1).contiguous().to(device))


def median_time(fn, repeats: int, sync=lambda: None) -> float:
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def pydensecrf_run(image: np.ndarray, probs: np.ndarray, iterations: int = SETTINGS["iterations"]):
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    num_labels, h, w = probs.shape
    d = dcrf.DenseCRF2D(w, h, num_labels)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    d.addPairwiseGaussian(sxy=SETTINGS["sigma_gamma"], compat=SETTINGS["w2"])
    d.addPairwiseBilateral(sxy=SETTINGS["sigma_alpha"], srgb=SETTINGS["sigma_beta"], rgbim=np.ascontiguousarray(image), compat=SETTINGS["w1"])
    return np.array(d.inference(iterations))


def bench_cpu(args) -> None:
    image, probs = photo(args.height, args.width), network_like_probs(args.height, args.width, args.labels)
    dense_crf(image, probs, **SETTINGS)  # warm-up
    ours = median_time(lambda: dense_crf(image, probs, **SETTINGS), args.repeats)
    print(f"dlcore.crf.dense_crf  {args.width}x{args.height}, {args.labels} labels, 10 it, {torch.get_num_threads()} threads: {ours * 1e3:.0f} ms")
    try:
        ref = median_time(lambda: pydensecrf_run(image, probs), args.repeats)
    except ImportError:
        print("pydensecrf2 not installed: no reference")
        return
    print(f"pydensecrf2 (1 thread): {ref * 1e3:.0f} ms   ratio dlcore / pydensecrf2 = {ours / ref:.2f}x")


def bench_cuda(args) -> None:
    device = torch.device("cuda")
    image_t, probs_t = batch_inputs(args, 1, device)
    crf = DenseCRF(**SETTINGS)
    sync = torch.cuda.synchronize
    crf(image_t, probs_t)
    torch.cuda.reset_peak_memory_stats()
    one = median_time(lambda: crf(image_t, probs_t), args.repeats, sync)
    peak = torch.cuda.max_memory_allocated() / 2**20
    batch_images, batch_probs = batch_inputs(args, args.batch, device)
    crf(batch_images, batch_probs)
    batch = median_time(lambda: crf(batch_images, batch_probs), args.repeats, sync)
    print(f"{torch.cuda.get_device_name()}: {one * 1e3:.1f} ms/image (lattice build included), peak {peak:.0f} MiB; "
          f"batch {args.batch}: {args.batch / batch:.0f} images/s")
    image, probs = photo(args.height, args.width), network_like_probs(args.height, args.width, args.labels)
    try:
        ref = median_time(lambda: pydensecrf_run(image, probs), max(1, args.repeats // 3))
        print(f"pydensecrf2 (CPU, 1 thread): {ref * 1e3:.0f} ms   speed-up {ref / one:.0f}x")
    except ImportError:
        print("pydensecrf2 not installed: no reference")


def bench_phases(args) -> None:
    """Where one DenseCRF call spends its time: each phase timed alone, synchronised, median of --repeats."""
    from dlcore.crf import cuda as crf_cuda
    from dlcore.crf.meanfield import PROB_FLOOR, mean_field, pairwise_filter

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    images, probs = batch_inputs(args, args.batch, device)
    s = SETTINGS
    features = lambda: crf_features(images, s["sigma_alpha"], s["sigma_beta"], s["sigma_gamma"])  # noqa: E731
    appearance, smoothness, group = features()
    lattices = [PermutohedralLattice(appearance, group), PermutohedralLattice(smoothness, group)]
    pairwise = pairwise_filter(lattices, [s["w1"], s["w2"]], "symmetric")
    unary = -torch.log(probs.permute(0, 2, 3, 1).reshape(-1, args.labels).clamp_min(PROB_FLOOR))

    def fused():
        for lattice in lattices:
            lattice._total_weight = None  # the kernel normalisation is kept after a first use: recompute it
        return pairwise_filter(lattices, [s["w1"], s["w2"]], "symmetric")

    phases = {
        "features": features,
        "appearance lattice": lambda: PermutohedralLattice(appearance, group),
        "smoothness lattice (cached by DenseCRF)": lambda: PermutohedralLattice(smoothness, group),
        "normalisation + fused arrays": fused,
        "mean-field, embedding-bag products": lambda: mean_field(unary, pairwise, s["iterations"]),
    }
    if crf_cuda.available(device):
        phases["mean-field, Triton kernels"] = lambda: crf_cuda.mean_field(unary, pairwise, s["iterations"])
    crf = DenseCRF(**s)
    phases["DenseCRF, whole call"] = lambda: crf(images, probs)
    print(f"{args.batch} x {args.width}x{args.height}, {args.labels} labels on {device}: "
          f"{lattices[0].num_vertices} + {lattices[1].num_vertices} lattice vertices")
    for name, fn in phases.items():
        fn()  # warm-up (Triton compilation, allocator, the cached smoothness lattice)
        ms = median_time(fn, args.repeats, sync) * 1e3
        print(f"  {name:<40}{ms:9.2f} ms")


def bench_scaling(args) -> None:
    """Time of one appearance-kernel filtering (21 channels) against pixel count: exact O(N^2) vs lattice O(N)."""
    import matplotlib.pyplot as plt

    sides = [16, 24, 32, 48, 64, 96] + [128, 192, 256, 384]
    rows = []
    for side in sides:
        image = torch.from_numpy(photo(side, side)).permute(2, 0, 1)[None]
        appearance, _, _ = crf_features(image, SETTINGS["sigma_alpha"], SETTINGS["sigma_beta"], SETTINGS["sigma_gamma"])
        values = torch.rand(side * side, args.labels)
        lattice_t = median_time(lambda: PermutohedralLattice(appearance).filter(values), 3)
        exact_t = median_time(lambda: exact_gaussian_filter(appearance, values), 1) if side <= 96 else float("nan")
        rows.append((side * side, exact_t, lattice_t))
        print(f"N = {side * side:7d}: exact {exact_t * 1e3:9.1f} ms   lattice {lattice_t * 1e3:7.1f} ms")
    n, exact, lattice = map(np.array, zip(*rows))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(n, exact, "o-", label="exact, O(N^2)")
    ax.loglog(n, lattice, "s-", label="permutohedral lattice, O(N)")
    ax.set_xlabel("pixels N")
    ax.set_ylabel("seconds per filtering (21 labels)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    out = Path(args.scaling)
    print("wrote", savefig(fig, out.stem, out.parent))
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--labels", type=int, default=21)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--phases", action="store_true", help="time each phase of one call (with --device, --batch)")
    parser.add_argument("--scaling", default=None, help="write the exact-vs-lattice scaling plot to this .png")
    parser.add_argument("--compare", action="store_true", help="the fair comparison of every implementation here")
    parser.add_argument("--load", action="store_true", help="with --compare: warm times with a busy process on one core")
    parser.add_argument("--plot", default=str(Path(__file__).with_name("crf_compare.png")), help="with --compare")
    parser.add_argument("--voc-limit", type=int, default=0, help="with --compare: at most this many VOC photographs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.compare:  # --threads means that many, whatever the load (the default policy would pick fewer)
        os.environ.setdefault("DLCORE_CRF_THREADS", str(args.threads))
    if args.compare:
        import crf_compare

        crf_compare.main(args)
    elif args.scaling:
        bench_scaling(args)
    elif args.phases:
        bench_phases(args)
    elif args.device == "cuda":
        bench_cuda(args)
    else:
        bench_cpu(args)


if __name__ == "__main__":
    main()
