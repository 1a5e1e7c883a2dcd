"""What a zoo training step costs on this CPU, and what each lever saves: bf16 autocast, the memoised stem.

    python benchmarks/zoo_levers.py [--models deeplab-v1-largefov ...] [--repeats 7]

For each model, one thread, batch 8 of 256 x 256 scenes, in one process so that the ratios compare like with like:
- a scene made by SyntheticScenes (what `zoo train` makes once per training scene and keeps);
- the frozen stem on one image (what the memo computes once per image);
- a training step (forward, backward, SGD) with the stem memoised, in fp32 and in bf16 autocast;
- the same step with the stem recomputed every step (no memo), fp32.
Each figure is the median of --repeats timed steps after one warm-up step.
"""

from __future__ import annotations

import argparse
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
    from dlcore.zoo import ZOO_DIR, memo, training

    scenes = SyntheticScenes("train", n=64, size=256, seed=5)
    counter = iter(range(10 ** 6))
    scene_s = _median_seconds(lambda: scenes[next(counter) % 64], args.repeats)
    items = [scenes[i] for i in range(8)]
    x = normalize(torch.stack([im for im, _ in items]))
    masks = torch.stack([m for _, m in items])
    print(f"{'model':<32}{'scene':>8}{'stem/img':>10}{'step fp32':>11}{'step bf16':>11}{'no memo':>10}{'bf16 gain':>11}"
          f"{'memo gain':>11}   (seconds, median of {args.repeats}; one thread)")
    for name in args.models:
        model = training._seeded_model(name, 0, ZOO_DIR).train()
        optimizer = torch.optim.SGD(param_groups(model, 0.01), lr=0.01, momentum=0.9)

        def step(bf16: bool):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
            loss = segmentation_loss(out, masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        stem_s = _median_seconds(lambda: model.backbone.stem(x[:1]), args.repeats)
        fp32 = _median_seconds(lambda: step(False), args.repeats)
        bf16 = _median_seconds(lambda: step(True), args.repeats)
        model.backbone.stem_memo = None
        plain = _median_seconds(lambda: step(False), args.repeats)
        memo.attach(model)
        print(f"{name:<32}{scene_s:>8.3f}{stem_s:>10.3f}{fp32:>11.3f}{bf16:>11.3f}{plain:>10.3f}{fp32 / bf16:>10.2f}x"
              f"{plain / fp32:>10.2f}x")


if __name__ == "__main__":
    main()
