"""Is data loading ever the bottleneck on two cores? SyntheticScenes batches/s vs training steps/s.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loader.py [--size 128] [--batch 8] [--threads 1]

Measures (1) how many batches of `--batch` SyntheticScenes of `--size` x `--size` a torch DataLoader delivers per
second with num_workers 0 and 1 (shuffled, default collate), and (2) how many SGD steps per second a width-0.25
DeepLab-LargeFOV (`deeplab-v1-largefov`, VGG-16 trunk) takes on the same batches on the CPU (forward, loss,
backward, update). The ratio loader / training must be > 1 (the issue: "the loader delivers batches faster than
the net consumes them"); with num_workers=0 the loader's time adds to each step, so the ratio says what share
of a step the data costs (1 / ratio). Results go in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dlcore.data import SyntheticScenes  # noqa: E402
from dlcore.data.transforms import normalize  # noqa: E402


def loader_rate(size, batch, workers, batches) -> float:
    ds = SyntheticScenes("train", n=batch * (batches + 4), size=size, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                         persistent_workers=False)
    it = iter(loader)
    for _ in range(2):  # worker start-up and first batches are not the steady state
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - start)


def train_rate(size, batch, steps, num_classes) -> float:
    from dlcore.models import build_model

    torch.manual_seed(0)
    model = build_model("deeplab-v1-largefov", num_classes=num_classes, width=0.25).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    ds = SyntheticScenes("train", n=batch, size=size, seed=0)
    images, masks = map(torch.stack, zip(*(ds[i] for i in range(batch))))
    x = normalize(images)

    def step():
        loss = F.cross_entropy(model(x), masks, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=60, help="batches timed per loader setting")
    p.add_argument("--steps", type=int, default=10, help="training steps timed")
    p.add_argument("--threads", type=int, default=None, help="torch threads for training (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print("command: python benchmarks/loader.py " + " ".join(sys.argv[1:]))
    print(f"torch threads {torch.get_num_threads()}; SyntheticScenes {args.size}x{args.size}, batch {args.batch}")
    rates = {w: loader_rate(args.size, args.batch, w, args.batches) for w in (0, 1)}
    for w, r in rates.items():
        print(f"loader num_workers={w}: {r:.1f} batches/s ({r * args.batch:.0f} images/s)")
    t = train_rate(args.size, args.batch, args.steps, SyntheticScenes.num_classes)
    print(f"training deeplab-v1-largefov width 0.25: {t:.2f} steps/s ({t * args.batch:.1f} images/s)")
    for w, r in rates.items():
        print(f"ratio loader/training, num_workers={w}: {r / t:.1f}x "
              f"(data is {100 * t / r:.0f}% of a step's time when loaded in the training process)")
    return 0 if min(rates.values()) > t else 1


if __name__ == "__main__":
    sys.exit(main())
