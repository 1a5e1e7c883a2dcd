"""The zoo's schedule study: learning curves of one zoo head under several recipes, on the selection scenes.

    python benchmarks/zoo_study.py --runs lr0.03-n4000-bf16 lr0.1-n4000-bf16 ...   (results added to --out)
    python benchmarks/zoo_study.py --model deeplab-v2-resnet101-aspp-l --runs lr0.03-n4000-bf16

A run's name is its recipe change from the zoo's (lr, n = training scenes, b = batch, s = steps, seed, bf16 =
bf16 autocast; e.g. lr0.1-n4000-b16-s3000-bf16), and for ResNet-101's probes: l3 = layer3 trains too (the stem
is then run every step, not memoised), os16 = output stride 16 (layer3 keeps its pre-trained rate), bnfix = every
batch norm keeps its statistics (DeepLab v2's released ResNet-101 recipe). Each run trains zoo model --model exactly as `zoo train` does
(`dlcore.zoo.training`: the network's own forward with its frozen stem memoised, `dlcore.train.train`), and
scores val mean IoU without the CRF on `--select` selection scenes every `--every` steps. Selection scenes are
SyntheticScenes("val", seed=0)[0:N], the scenes every choice is made on; the zoo's test scenes are never read here.
A run stopped part-way continues from its checkpoint under build/zoo-study/. One thread (two runs share two cores).

Runs recorded with "loop": "cached features" come from this script's first version (commit c083eab), which
trained on a cache of the frozen trunk's fp16 features with its own SGD loop: the same recipe, another sample order.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

WORK = Path("build/zoo-study")
# Runs since the zoo trains as DeepLab does (the ground truth subsampled by 8, `DeepLab.train_at_stride`; FCN's
# final upsamplers fixed): their keys and folders end in "@stride"; the runs before were trained against the
# full-size labels.
LOOP = "stride"


def parse(run: str) -> dict:
    """lr0.03-n1000-b8-s6000-bf16 -> {"lr": 0.03, "n": 1000, "batch": 8, "steps": 6000, "bf16": True, "seed": 0}"""
    cfg = {"lr": 0.03, "n": 1000, "batch": 8, "steps": 6000, "bf16": False, "seed": 0, "l3": False, "os16": False,
           "bnfix": False}
    for part in run.split("-"):
        if part in ("bf16", "l3", "os16", "bnfix"):
            cfg[part] = True
        elif part.startswith("lr"):
            cfg["lr"] = float(part[2:])
        elif part.startswith("seed"):
            cfg["seed"] = int(part[4:])
        elif part[:1] in ("n", "b", "s") and part[1:].isdigit():
            cfg[{"n": "n", "b": "batch", "s": "steps"}[part[0]]] = int(part[1:])
        else:
            raise SystemExit(f"zoo_study: cannot read {part!r} of run {run!r} (lr0.03, n4000, b8, s6000, seed1, bf16, "
                             "l3, os16, bnfix)")
    return cfg


def curve(model_name: str, run: str, select: int, every: int, log, zoo_dir: Path | None = None) -> list:
    from dlcore.data import SyntheticScenes
    from dlcore.io import atomic_write_bytes
    from dlcore.metrics import scores_from_confusion
    from dlcore.train import train
    from dlcore.zoo import FULL, ZOO_DIR, image_confusions, labels_of, probabilities, scenes, training

    cfg = parse(run)
    work = WORK / (model_name + (f"@{Path(zoo_dir).name}" if zoo_dir else "")) / f"{run}@{LOOP}"
    points_file = work / "points.json"
    points = json.loads(points_file.read_text()) if points_file.is_file() else []
    if cfg["os16"]:  # the same model at output stride 16, for this run only
        from dataclasses import replace

        from dlcore.zoo import MODELS

        spec = MODELS[model_name]
        model_name = f"{model_name}-os16-probe"
        MODELS[model_name] = replace(spec, options={**spec.options, "output_stride": 16})
    model = training._seeded_model(model_name, cfg["seed"], zoo_dir or ZOO_DIR)  # its pre-trained start
    if cfg["l3"]:  # layer3 learns too: its output changes every step, so nothing below layer4 is remembered
        b = model.backbone
        b.stem_memo = None
        for p in b.layer3.parameters():
            p.requires_grad_(True)
        for m in (b.conv1, b.bn1, b.layer1, b.layer2):  # still frozen: their batch norm keeps its statistics
            m.train = (lambda module: lambda mode=True: nn.Module.train(module, False))(m)
    if cfg["bnfix"]:  # DeepLab v2's recipe: every batch norm keeps its pre-trained statistics (layer4's too)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train = (lambda module: lambda mode=True: nn.Module.train(module, False))(m)
    sel = scenes(FULL, "val", select)
    t0 = time.perf_counter()

    def evaluate(step, loss):
        if step % every and step != cfg["steps"]:
            return
        labels = labels_of(probabilities(model, sel))
        cm = image_confusions(labels, sel["masks"].numpy(), model.num_classes).sum(0)
        points.append([step, round(100 * float(scores_from_confusion(cm)["miou"]), 2), round(time.perf_counter() - t0)])
        atomic_write_bytes(points_file, json.dumps(points).encode())
        log(f"  step {step}: {points[-1][1]}  ({points[-1][2]} s)")
        model.train()

    data = training._Remembered(SyntheticScenes("train", n=cfg["n"], size=FULL.size, seed=0))
    train(model, data, steps=cfg["steps"], batch_size=cfg["batch"], lr=cfg["lr"], seed=cfg["seed"], bf16=cfg["bf16"],
          checkpoint_dir=work, checkpoint_every=every, resume=(work / "last.pt").is_file(), progress=False,
          on_step=evaluate)
    return sorted({p[0]: p for p in points}.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deeplab-v1-largefov")
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--select", type=int, default=128)
    p.add_argument("--every", type=int, default=500)
    p.add_argument("--out", type=Path, default=Path("benchmarks/zoo_study.json"))
    p.add_argument("--zoo-dir", type=Path, default=None,
                   help="start from this zoo's pre-trained classifiers (default: the shipped zoo's)")
    args = p.parse_args()
    for run in args.runs:
        parse(run)  # every name checked before the first hour of training
    torch.set_num_threads(1)
    from dlcore.io import atomic_write_bytes

    for run in args.runs:
        key = f"{args.model}/{run}@train@{LOOP}"  # the first version's runs are "{model}/{run}"
        if args.zoo_dir:  # another pre-training: its own key and checkpoints
            key += f"@{args.zoo_dir.name}"
        done = json.loads(args.out.read_text()) if args.out.exists() else {}
        if key in done:
            continue
        print(key, flush=True)
        pts = curve(args.model, run, args.select, args.every, lambda s: print(s, flush=True), args.zoo_dir)
        done = json.loads(args.out.read_text()) if args.out.exists() else {}  # another run may have added its own
        done[key] = {"points": pts, "select": args.select, "loop": f"dlcore.train, {LOOP}", "date": time.strftime("%Y-%m-%d"),
                     "machine": "2-core AMD EPYC, 1 thread"}
        atomic_write_bytes(args.out, json.dumps(done, indent=1).encode())


if __name__ == "__main__":
    main()
