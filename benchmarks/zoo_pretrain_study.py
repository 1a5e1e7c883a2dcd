"""The stand-in pre-training as a lever on ResNet-101 (issue 21, item 5): pre-train a classifier on a recipe, then
read what its frozen stem knows with `zoo_stem_probe`'s linear probe.

    python benchmarks/zoo_pretrain_study.py --arch resnet101 --runs lr0.1 lr0.02-s3600

A run is tokens joined by "-": lr<x> (learning rate; the zoo's is 0.02), s<steps> (1,200), b<batch> (16). Each run
pre-trains through `dlcore.pretrain.pretrain` with its checkpoints in build/pretrain-study/RUN/ (a stopped run
resumes), then records label accuracy, seconds and the linear probe's mean IoU on the selection scenes in
benchmarks/zoo_pretrain_study.json. One thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from zoo_stem_probe import STEMS, probe

WORK = Path("build/pretrain-study")


def parse(run: str) -> dict:
    keys = {"lr": ("lr", float), "s": ("steps", int), "b": ("batch_size", int)}
    recipe = dict(lr=0.02, steps=1200, batch_size=16)
    for token in run.split("-"):
        prefix = "lr" if token.startswith("lr") else token[:1]
        if prefix not in keys:
            raise SystemExit(f"unknown run token {token!r} in {run!r}; use lr<x>, s<steps>, b<batch>")
        key, kind = keys[prefix]
        recipe[key] = kind(token[len(prefix):])
    return recipe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet101", choices=("vgg16", "resnet101"))
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--probe-steps", type=int, default=600)
    p.add_argument("--out", type=Path, default=Path("benchmarks/zoo_pretrain_study.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    from dlcore.io import atomic_write_bytes
    from dlcore.pretrain import pretrain
    from dlcore.zoo import WIDTH

    for run in args.runs:
        recipe = parse(run)
        key = f"{args.arch}/{run}"
        t0 = time.perf_counter()
        result = pretrain(args.arch, width=WIDTH, n_images=8192, seed=0, checkpoint_dir=WORK / key,
                          checkpoint_every=200, **recipe)
        seconds = time.perf_counter() - t0
        state = result["model"].state_dict()
        stems = {label: s for label, s in STEMS.items() if s[2] == args.arch and "stride 16" not in label}
        probes = {label: round(probe(name, options, state, steps=args.probe_steps, n=1000, select=128)[0], 2)
                  for label, (name, options, _) in stems.items()}
        row = {"recipe": recipe, "label_accuracy": round(result["accuracy"], 4), "seconds": round(seconds),
               "probe": probes, "date": time.strftime("%Y-%m-%d"), "machine": "2-core AMD EPYC, 1 thread"}
        print(key, row, flush=True)
        done = json.loads(args.out.read_text()) if args.out.exists() else {}
        done[key] = row
        atomic_write_bytes(args.out, json.dumps(done, indent=1).encode())


if __name__ == "__main__":
    main()
