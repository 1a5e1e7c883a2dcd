"""The fair CRF benchmark (issue 14): one harness, one input, the papers' settings, every implementation here.

    python benchmarks/crf.py --compare                      # table + benchmarks/crf_compare.png
    python benchmarks/crf.py --compare --load               # the same with a busy process holding one core

Input: grace_hopper.jpg resized to 500 x 375, 21 labels of smooth random logits at stride 16, DeepLab-LargeFOV's
CRF (w1 4, sigma_alpha 121, sigma_beta 5, w2 3, sigma_gamma 3), 10 iterations. Implementations: dlcore on the CPU
with 1 and 2 threads and with its default thread policy, pydensecrf2 (1 thread: it has no other), SimpleCRF where
it imports, dlcore on CUDA where a GPU is. Reported:

- warm: median of --repeats calls, the implementations interleaved in every round, each ratio to pydensecrf2
  taken within its round; the load average beside it;
- build / iterations: a call of 1 and of 10 iterations, per iteration = (t10 - t1) / 9, build = t1 - that;
- cold: the first call in a fresh process (after the imports), and that process's peak memory (ru_maxrss) and
  the growth of it over the call;
- batch: images/s for --batch copies in one DenseCRF call (pydensecrf2: one image after another);
- agreement: labels equal to pydensecrf2's on the VOC photographs beside the checkout (crf_parity.py);
- the physical estimate: bytes one mean-field iteration must move at the least, over the copy bandwidth measured
  here, an estimate and labelled so.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def _env_threads(threads):
    """Context: DLCORE_CRF_THREADS set to `threads` ('auto' = the default policy) for the block."""
    class _Set:
        def __enter__(self):
            self.before = os.environ.get("DLCORE_CRF_THREADS")
            os.environ["DLCORE_CRF_THREADS"] = str(threads)

        def __exit__(self, *exc):
            if self.before is None:
                os.environ.pop("DLCORE_CRF_THREADS", None)
            else:
                os.environ["DLCORE_CRF_THREADS"] = self.before
    return _Set()


def implementations(image, probs, settings, iterations=None):
    """name -> a call running that CRF once on (image, probs); only those that import here."""
    from crf import pydensecrf_run
    from dlcore.crf import dense_crf

    s = dict(settings) if iterations is None else {**settings, "iterations": iterations}
    out = {}
    cores = min(2, os.cpu_count() or 1)
    for label, threads in (("dlcore CPU, 1 thread", 1), ("dlcore CPU, 2 threads", 2), ("dlcore CPU, default", "auto")):
        def run(threads=threads):
            with _env_threads(threads):
                torch.set_num_threads(cores if threads == "auto" else threads)  # "auto": the policy's ceiling
                return dense_crf(image, probs, **s)
        out[label] = run
    try:
        import pydensecrf.densecrf  # noqa: F401
        out["pydensecrf2"] = lambda: pydensecrf_run(image, probs, s["iterations"])
    except ImportError:
        pass
    try:
        import denseCRF  # SimpleCRF's module  # noqa: F401
        out["SimpleCRF"] = lambda: _simplecrf_run(image, probs, s)
    except ImportError:
        pass
    if torch.cuda.is_available():
        out["dlcore CUDA"] = _cuda_call(image, probs, s)
    return out


def _simplecrf_run(image, probs, s):
    import denseCRF

    # SimpleCRF's densecrf(I, P, param): param = (w1, alpha, beta, w2, gamma, iterations)
    return denseCRF.densecrf(image, np.ascontiguousarray(probs.transpose(1, 2, 0)),
                             (s["w1"], s["sigma_alpha"], s["sigma_beta"], s["w2"], s["sigma_gamma"], s["iterations"]))


def _cuda_call(image, probs, s):
    from dlcore.crf import DenseCRF

    crf = DenseCRF(**s)
    img = torch.from_numpy(image).permute(2, 0, 1)[None].cuda()
    pr = torch.from_numpy(probs)[None].cuda()

    def run():
        out = crf(img, pr)
        torch.cuda.synchronize()
        return out
    return run


def warm_times(calls, repeats):
    """Median seconds per implementation, interleaved rounds; ratio to pydensecrf2 within each round."""
    for fn in calls.values():
        fn()  # warm-up: allocator, the cached smoothness lattice, CUDA kernels
    rounds = []
    for _ in range(repeats):
        row = {}
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            row[name] = time.perf_counter() - t0
        rounds.append(row)
    out = {}
    for name in calls:
        times = [r[name] for r in rounds]
        ratio = (statistics.median(r[name] / r["pydensecrf2"] for r in rounds) if "pydensecrf2" in calls else float("nan"))
        out[name] = {"ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "ratio": ratio,
                     "rounds": times}
    return out


def build_and_iterations(image, probs, settings, repeats):
    """Per implementation: build ms and ms per iteration from calls of 1 and 10 iterations (medians)."""
    one = warm_times(implementations(image, probs, settings, 1), repeats)
    ten = warm_times(implementations(image, probs, settings, settings["iterations"]), repeats)
    k = settings["iterations"] - 1
    return {name: {"build_ms": one[name]["ms"] - (ten[name]["ms"] - one[name]["ms"]) / k,
                   "iteration_ms": (ten[name]["ms"] - one[name]["ms"]) / k} for name in ten}


COLD_SCRIPT = r"""
import json, sys, time
sys.path.insert(0, {here!r})
t0 = time.perf_counter()
import numpy as np, torch
from crf import SETTINGS, network_like_probs, photo
from crf_compare import implementations, peak_kib
image, probs = photo({h}, {w}), network_like_probs({h}, {w}, {labels})
fn = implementations(image, probs, SETTINGS)[{name!r}]
imported = time.perf_counter() - t0
before = peak_kib()
t0 = time.perf_counter(); fn(); cold = time.perf_counter() - t0
peak = peak_kib()
print(json.dumps({{"import_s": imported, "cold_ms": 1e3 * cold, "peak_mib": peak / 1024, "growth_mib": (peak - before) / 1024}}))
"""


def peak_kib() -> int:
    """This process's peak resident memory in KiB: /proc's VmHWM (ru_maxrss keeps the parent's across exec)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def cold_runs(names, args):
    """The first call of each implementation in a fresh process, and that process's peak memory."""
    out = {}
    for name in names:
        if name == "dlcore CUDA":
            continue  # peak GPU memory: benchmarks/crf.py --device cuda
        code = COLD_SCRIPT.format(here=str(HERE), h=args.height, w=args.width, labels=args.labels, name=name)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def batch_throughput(image, probs, settings, batch, repeats):
    """Images/s: dlcore's DenseCRF on `batch` copies in one call (1 and 2 threads), pydensecrf2 one by one."""
    from dlcore.crf import DenseCRF

    crf = DenseCRF(**settings)
    images = torch.from_numpy(image).permute(2, 0, 1)[None].expand(batch, -1, -1, -1).contiguous()
    prob_t = torch.from_numpy(probs)[None].expand(batch, -1, -1, -1).contiguous()
    calls = {}
    for threads in (1, 2):
        def run(threads=threads):
            with _env_threads(threads):
                torch.set_num_threads(threads)
                crf(images, prob_t)
        calls[f"dlcore CPU, {threads} thread{'s' if threads > 1 else ''}, batch {batch}"] = run
    single = implementations(image, probs, settings)
    if "pydensecrf2" in single:
        calls[f"pydensecrf2, {batch} in turn"] = lambda: [single["pydensecrf2"]() for _ in range(batch)]
    times = warm_times(calls, max(1, repeats // 2))
    return {name: batch / (t["ms"] / 1e3) for name, t in times.items()}


def copy_bandwidth() -> float:
    """Bytes/s of one large tensor copy (read + write), 1 thread: the bandwidth the estimate divides by."""
    a = torch.empty(64 * 2**20 // 4)
    b = torch.empty_like(a)
    b.copy_(a)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    t = min(_timed(lambda: b.copy_(a)) for _ in range(5))
    torch.set_num_threads(before)
    return 2 * a.numel() * 4 / t


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def traffic_per_iteration(image, probs, settings) -> dict:
    """Bytes one mean-field iteration reads and writes at the least, from the fused filter's sizes (an estimate).

    Each entry of splat, blur and slice reads its index and weight (12 bytes) and one row of C floats; each
    product writes its output once; the softmax reads the message and the unary and writes Q. Cache reuse of
    the gathered rows is ignored in the upper count and assumed perfect in the lower one.
    """
    from dlcore.crf import crf_features
    from dlcore.crf.lattice import PermutohedralLattice
    from dlcore.crf.meanfield import pairwise_filter

    s = settings
    images = torch.from_numpy(image).permute(2, 0, 1)[None]
    appearance, smoothness, _ = crf_features(images, s["sigma_alpha"], s["sigma_beta"], s["sigma_gamma"])
    pairwise = pairwise_filter([PermutohedralLattice(appearance), PermutohedralLattice(smoothness)],
                               [s["w1"], s["w2"]], "symmetric")
    (points, _, _), blurs, (corners, _) = pairwise.bags()
    n, c, m = pairwise.num_points, probs.shape[0], pairwise.num_vertices
    row = 4 * c
    products = [(points.numel(), m + 1), *[(index.numel(), m + 1) for index, _ in blurs], (corners.numel(), n)]
    index_bytes = sum(12 * nnz for nnz, _ in products) + 8 * (m + 1)  # int64 index + float32 weight; splat offsets
    writes = sum(rows * row for _, rows in products)
    gathers = sum(nnz * row for nnz, _ in products)
    streamed = index_bytes + writes + 3 * n * row  # + softmax: message, unary in; Q out
    inputs = n * row + sum(rows * row for _, rows in products[:-1])  # each product's input read once
    return {"points": n, "labels": c, "vertices": m, "lower_bytes": streamed + inputs, "upper_bytes": streamed + gathers}


def plot(warm, split, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dlcore.viz import savefig

    names = [n for n in warm if n in split]
    build = [max(0.0, split[n]["build_ms"]) for n in names]
    iters = [split[n]["iteration_ms"] * 10 for n in names]
    fig, ax = plt.subplots(figsize=(6.4, 2.6))
    y = np.arange(len(names))
    ax.barh(y, build, color="#9ecae1", label="lattice build (1-iteration call less one iteration)")
    ax.barh(y, iters, left=build, color="#3182bd", label="10 mean-field iterations")
    ref = dict(zip(names, (b + i for b, i in zip(build, iters)))).get("pydensecrf2")
    for i, n in enumerate(names):
        total = build[i] + iters[i]
        label = f"{total:.0f} ms" + (f", {total / ref:.2f}x" if ref else "")
        ax.text(total + 10, i, label, va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms, 500 x 375, 21 labels, 10 iterations (medians of the same run)", fontsize=8)
    ax.set_xlim(0, 1.35 * max(b + i for b, i in zip(build, iters)))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out = savefig(fig, path.stem, path.parent)
    plt.close(fig)
    return out


def voc_agreement(limit: int) -> dict | None:
    """Label agreement and max |dQ| against pydensecrf2 on the VOC photographs beside the checkout."""
    import crf_parity

    if not crf_parity.PEER.is_dir():
        return None
    rows = []
    for _, _, image, labels in crf_parity.pairs():
        if limit and len(rows) >= limit:
            break
        rows.append(crf_parity.compare_one(image, labels, bound=1e-3, with_float64=False))
    return {"photographs": len(rows), "agree_mean": float(np.mean([r["agree"] for r in rows])),
            "agree_worst": min(r["agree"] for r in rows), "max_dq": max(r["max_dq"] for r in rows)}


def busy_process():
    """A competing busy process on CPU 1 (a browser tab, a second kernel): `python -c "while True: pass"`."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(proc.pid, {sorted(os.sched_getaffinity(0))[-1]})
    time.sleep(0.5)
    return proc


def main(args) -> None:
    from crf import SETTINGS, network_like_probs, photo

    image, probs = photo(args.height, args.width), network_like_probs(args.height, args.width, args.labels)
    load = lambda: "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())  # noqa: E731
    print(f"{args.width}x{args.height}, {args.labels} labels, {SETTINGS}; {os.cpu_count()} CPUs; torch {torch.__version__}")
    competitor = busy_process() if args.load else None
    try:
        print(f"[{load()}]{' with a busy process on one core' if competitor else ''}")
        warm = warm_times(implementations(image, probs, SETTINGS), args.repeats)
        print(f"warm, median of {args.repeats} interleaved rounds [{load()}]")
        for name, t in warm.items():
            print(f"  {name:<26}{t['ms']:8.0f} ms (min {t['min_ms']:.0f})   {t['ratio']:.2f}x pydensecrf2")
        if args.load:
            pairs = zip(warm["dlcore CPU, default"]["rounds"], warm["dlcore CPU, 1 thread"]["rounds"])
            print(f"  default / 1 thread = {statistics.median(a / b for a, b in pairs):.2f} "
                  "(median of the per-round ratios; target <= 1.2)")
            return
        split = build_and_iterations(image, probs, SETTINGS, args.repeats)
        print(f"build and iterations [{load()}]")
        for name, t in split.items():
            print(f"  {name:<26}build {t['build_ms']:7.0f} ms   {t['iteration_ms']:6.1f} ms / iteration")
        cold = cold_runs(warm, args)
        print(f"cold: first call in a fresh process [{load()}]")
        for name, c in cold.items():
            print(f"  {name:<26}{c['cold_ms']:8.0f} ms (imports {c['import_s']:.1f} s)   peak RSS {c['peak_mib']:.0f} MiB, "
                  f"+{c['growth_mib']:.0f} MiB over the call")
        batch = batch_throughput(image, probs, SETTINGS, args.batch, args.repeats)
        print(f"batch throughput [{load()}]")
        for name, rate in batch.items():
            print(f"  {name:<40}{rate:6.2f} images/s")
        est = traffic_per_iteration(image, probs, SETTINGS)
        bw = copy_bandwidth()
        print(f"physical estimate (an estimate, not a measurement): {est['points']} pixels, {est['vertices']} lattice "
              f"vertices, {est['labels']} labels; one iteration moves {est['lower_bytes'] / 2**20:.0f} to "
              f"{est['upper_bytes'] / 2**20:.0f} MiB; at the {bw / 1e9:.1f} GB/s one thread copies here: "
              f"{1e3 * est['lower_bytes'] / bw:.1f} to {1e3 * est['upper_bytes'] / bw:.1f} ms / iteration")
        agreement = voc_agreement(args.voc_limit)
        if agreement:
            print(f"VOC photographs: {agreement['photographs']}, labels equal to pydensecrf2's "
                  f"{100 * agreement['agree_mean']:.3f}% (worst {100 * agreement['agree_worst']:.3f}%), "
                  f"max |dQ| {agreement['max_dq']:.1e}")
        print("wrote", plot(warm, split, Path(args.plot)), f"[{load()}]")
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
