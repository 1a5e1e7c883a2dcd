"""The zoo's schedule study: learning curves of one zoo head under several recipes, on the selection scenes.

    python benchmarks/zoo_study.py --runs lr0.03-n1000 lr0.03-n4000 ...   (names below; results appended to --out)

Each run trains zoo model --model (default deeplab-v1-largefov) on the cached frozen trunk, as the zoo does,
with one recipe change, and evaluates val mean IoU (no CRF) on `--select` selection scenes every `--every` steps.
Selection scenes are SyntheticScenes("val", seed=0)[0:N]: the scenes every decision is made on; the zoo's test
scenes are another draw, never read here. One thread, bf16 autocast or fp32 (the run's name says which).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def parse(run: str) -> dict:
    """lr0.03-n1000-b8-s6000-bf16 -> {"lr": 0.03, "n": 1000, "batch": 8, "steps": 6000, "bf16": True}"""
    cfg = {"lr": 0.03, "n": 1000, "batch": 8, "steps": 6000, "bf16": False, "seed": 0}
    for part in run.split("-"):
        if part == "bf16":
            cfg["bf16"] = True
        elif part.startswith("lr"):
            cfg["lr"] = float(part[2:])
        elif part.startswith("seed"):
            cfg["seed"] = int(part[4:])
        else:
            key = {"n": "n", "b": "batch", "s": "steps"}[part[0]]
            cfg[key] = int(part[1:])
    return cfg


def curve(model_name: str, cfg: dict, select: int, every: int, log) -> list:
    from dlcore.metrics import scores_from_confusion
    from dlcore.train import param_groups, poly_lr, segmentation_loss
    from dlcore.zoo import recipe, training, trunk

    model = training._seeded_model(model_name, cfg["seed"], recipe.ZOO_DIR)
    data = trunk.features(model, "train", cfg["n"])
    sel = trunk.features(model, "val", select)
    feats, images, masks = data["features"], data["images"], data["masks"]
    optimizer = torch.optim.SGD(param_groups(model, cfg["lr"]), lr=cfg["lr"], momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(cfg["seed"])
    steps, batch = cfg["steps"], cfg["batch"]
    order = torch.cat([torch.randperm(cfg["n"], generator=g) for _ in range(steps * batch // cfg["n"] + 1)])
    points, t0 = [], time.perf_counter()

    def evaluate(step):
        labels = trunk.labels_of(trunk.probabilities(model, sel))
        cm = training.image_confusions(labels, sel["masks"].numpy(), model.num_classes).sum(0)
        points.append((step, round(100 * float(scores_from_confusion(cm)["miou"]), 2), round(time.perf_counter() - t0)))
        log(f"  step {step}: {points[-1][1]}  ({points[-1][2]} s)")
        model.train()

    model.train()
    for step in range(steps):
        if step % every == 0 and step:
            evaluate(step)
        idx = order[step * batch:(step + 1) * batch]
        for group in optimizer.param_groups:
            group["lr"] = poly_lr(cfg["lr"], step, steps) * group["lr_mult"]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg["bf16"]):
            out = trunk.forward_cached(model, {k: v[idx] for k, v in feats.items()}, images[idx])
        loss = segmentation_loss(out, masks[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    evaluate(steps)
    return points


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deeplab-v1-largefov")
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--select", type=int, default=128)
    p.add_argument("--every", type=int, default=500)
    p.add_argument("--out", type=Path, default=Path("benchmarks/zoo_study.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    done = json.loads(args.out.read_text()) if args.out.exists() else {}
    for run in args.runs:
        key = f"{args.model}/{run}"
        if key in done:
            continue
        print(key, flush=True)
        pts = curve(args.model, parse(run), args.select, args.every, lambda s: print(s, flush=True))
        done = json.loads(args.out.read_text()) if args.out.exists() else {}
        done[key] = {"points": pts, "select": args.select, "date": time.strftime("%Y-%m-%d"), "machine": "2-core AMD EPYC, 1 thread"}
        from dlcore.io import atomic_write_bytes
        atomic_write_bytes(args.out, json.dumps(done, indent=1).encode())


if __name__ == "__main__":
    main()
