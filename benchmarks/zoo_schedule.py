"""How far the zoo's frozen-trunk heads are from converged: one zoo head trained on a longer schedule.

    python benchmarks/zoo_schedule.py --steps 2400 --seed 0     # DeepLab-v1 LargeFOV, 2,400 steps, seed 0

Trains zoo model --model (default deeplab-v1-largefov) exactly as `python -m dlcore zoo train` does (the same
cached trunk features, poly LR, batch, width), but for --steps steps, in a scratch copy of the zoo (--work-dir;
the shipped zoo/ is only read), then prints its val mean IoU on the notebooks' test scenes without the CRF. One
thread, so that two seeds can run side by side on two cores. The shipped entries train 150 steps (the VGG-16
DeepLab heads) or 250; the schedule study of notebook 03 has 600.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deeplab-v1-largefov", help="a key of dlcore.zoo.MODELS")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=Path("build/zoo-schedule"),
                        help="scratch copy of the zoo that receives the trained file (default build/zoo-schedule)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from dlcore.metrics import scores_from_confusion
    from dlcore.zoo import recipe, training, trunk

    if args.model not in recipe.MODELS:
        raise SystemExit(f"zoo_schedule: unknown model {args.model!r}; known: {', '.join(recipe.MODELS)}")
    if args.steps < 1:
        raise SystemExit(f"zoo_schedule: --steps must be >= 1, got {args.steps}")
    work = args.work_dir / f"seed{args.seed}"
    if not work.exists():
        shutil.copytree(recipe.ZOO_DIR, work)  # the pre-trained trunks come along; zoo/ itself is never written
    name = f"{args.model}-x{args.steps}"
    recipe.MODELS[name] = replace(recipe.MODELS[args.model], steps=args.steps, short=True)
    start = time.time()
    info = training.train_model(name, args.seed, zoo_dir=work, progress=False)
    model = trunk.load(name, args.seed, work)
    data = trunk.features(model, "val", recipe.N_VAL, zoo_dir=work)
    labels = trunk.probabilities(model, data).argmax(1).numpy()
    cm = training.image_confusions(labels, data["masks"].numpy(), model.num_classes).sum(0)
    miou = 100 * scores_from_confusion(cm)["miou"]
    print(f"{args.model}, {args.steps} steps, seed {args.seed}: val mean IoU {miou:.1f}% ({recipe.N_VAL} scenes, "
          f"no CRF; training {info['train_seconds']} s, last loss {info['recipe']['loss']}, "
          f"{time.time() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
