"""What a zoo training step costs on this CPU, and what each lever saves.

    python benchmarks/zoo_levers.py [--models deeplab-v1-largefov ...] [--repeats 7]

For each model, one thread, batch 8 of 256 x 256 scenes, in one process so that the ratios compare like with like:
- a scene made by SyntheticScenes (what `zoo train` makes once per training scene and keeps);
- the frozen stem on one image (what the memo computes once per image);
- a training step (forward, backward, SGD) as `zoo train` runs it: stem memoised, bf16 autocast, DeepLab's scores
  kept at the output stride against the subsampled labels, the zoo's dropout, FCN's upsamplers in fp32;
- the same step with one lever undone at a time: fp32, labels at full size (the scores upsampled first), torch's
  nn.Dropout, the upsamplers in bf16, FCN's fixed bilinear upsampling as a grouped transposed convolution instead
  of two matrix products ("tent conv"), the stem recomputed every step (no memo). Each column's ratio is what that
  lever saves (the undone step's seconds over the trained step's).
Each figure is the median of --repeats timed steps after one warm-up step. Each lever's steps alternate with the
trained step's (one of each, --repeats times), so that a change in the machine's load falls on both alike; the
ratio is of the two medians of that pairing.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and oneDNN primitive creation
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _paired_medians(trained, undone, repeats: int) -> tuple[float, float]:
    """The medians of `trained` and `undone` timed alternately, after one warm-up of each."""
    trained(), undone()
    times = ([], [])
    for _ in range(repeats):
        for k, fn in enumerate((trained, undone)):
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["deeplab-v1-largefov", "deeplab-v1-7x7",
                                                     "deeplab-v2-resnet101-aspp-l"])
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(1)

    from dlcore.data import SyntheticScenes
    from dlcore.data.transforms import normalize
    from dlcore.train import param_groups, segmentation_loss
    from dlcore.zoo import ZOO_DIR, training

    scenes = SyntheticScenes("train", n=64, size=256, seed=5)
    counter = iter(range(10 ** 6))
    scene_s = _median_seconds(lambda: scenes[next(counter) % 64], args.repeats)
    items = [scenes[i] for i in range(8)]
    x = normalize(torch.stack([im for im, _ in items]))
    masks = torch.stack([m for _, m in items])
    levers = ("fp32", "full labels", "torch dropout", "bf16 upsampler", "tent conv", "no memo")
    print(f"{'model':<32}{'scene':>7}{'stem/img':>9}{'step':>7}" + "".join(f"{k:>16}" for k in levers)
          + f"   (seconds, median of {args.repeats}; one thread; x = the undone step over the trained one)")
    for name in args.models:
        model = training._seeded_model(name, 0, ZOO_DIR).train()
        optimizer = torch.optim.SGD(param_groups(model, 0.01), lr=0.01, momentum=0.9)

        def step(bf16: bool = True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
            loss = segmentation_loss(out, masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        stem_s = _median_seconds(lambda: model.backbone.stem(x[:1]), args.repeats)
        trained, undone = [], {}
        for lever in levers:
            def lever_step(lever=lever):
                if lever == "fp32":
                    return step(False)
                with _undone(model, lever):
                    step()
            pair = _paired_medians(step, lever_step, args.repeats)
            trained.append(pair[0])
            undone[lever] = pair[1] / pair[0]
        print(f"{name:<32}{scene_s:>7.3f}{stem_s:>9.3f}{statistics.median(trained):>7.3f}"
              + "".join(f"{undone[k]:>15.2f}x" for k in levers))


@contextlib.contextmanager
def _undone(model, lever: str):
    """`model` with one of the zoo's training levers replaced by the plain way, for the time of the block."""
    from torch import nn

    from dlcore.heads import BilinearUpsampler, Dropout

    swaps = []
    for m in model.modules():
        if lever == "full labels" and hasattr(m, "train_at_stride"):
            swaps.append((m, "train_at_stride", False))
        if lever == "torch dropout" and isinstance(m, Dropout):
            swaps.append((m, "__class__", nn.Dropout))
        if lever == "bf16 upsampler" and isinstance(m, BilinearUpsampler):
            swaps.append((m, "__class__", nn.ConvTranspose2d))
        if lever == "tent conv" and isinstance(m, BilinearUpsampler) and m._is_tent():
            swaps.append((m, "_tent", False))  # the cached answer of _is_tent, for this weight
    if lever == "no memo":
        swaps.append((model.backbone, "stem_memo", None))
    before = [(m, k, getattr(m, k)) for m, k, _ in swaps]
    for m, k, v in swaps:
        setattr(m, k, v)
    try:
        yield
    finally:
        for m, k, v in before:
            setattr(m, k, v)


if __name__ == "__main__":
    main()
