"""`python -m dlcore eval --checkpoint CKPT [--crf] [--scales ...] [--flip]`: `dlcore.inference.evaluate` from the shell."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dlcore.checkpoint import check_num_classes, checkpoint_normalize, load_checkpoint, load_model
from dlcore.cli.common import (MAX_SIDE, add_run_arguments, check_device, check_flags, check_scoring_memory,
                               checkpoint_crf, guarded, open_dataset)
from dlcore.inference import evaluate
from dlcore.io import atomic_write_bytes, check_output_file


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint file (e.g. build/run/last.pt)")
    p.add_argument("--model", default=None, help="expected network name (checked against the checkpoint)")
    p.add_argument("--data", choices=("synthetic", "voc"), default=None,
                   help="evaluation data (default: what the checkpoint was trained on)")
    p.add_argument("--root", help="VOC folder (holding VOCdevkit/VOC2012) for --data voc")
    p.add_argument("--split", default="val", help="split to score (default val)")
    p.add_argument("--crf", action="store_true", help="refine with the fully connected CRF (the settings the "
                   "checkpoint records, else dlcore.crf.DEFAULTS)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="test-time input scales, e.g. 0.5 0.75 1")
    p.add_argument("--flip", action="store_true", help="also run the mirrored image (probabilities averaged)")
    p.add_argument("--size", type=int, default=None, help="synthetic scene size (default: the training size)")
    p.add_argument("--n-val", type=int, default=100, help="number of synthetic validation scenes (default 100)")
    p.add_argument("--seed", type=int, default=None, help="synthetic data seed (default: the training seed)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (same-size images)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the scores to OUT as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace --json OUT if it exists (default: refuse to)")
    add_run_arguments(p)


def eval_data(args, trained_on: dict):
    """(dataset, description): the eval options, where not given what the checkpoint was trained on."""
    trained_on = trained_on if isinstance(trained_on, dict) else {}
    seed = args.seed if args.seed is not None else trained_on.get("seed", 0)
    return open_dataset(args.data or trained_on.get("data", "synthetic"), args.split,
                        root=args.root or trained_on.get("root"), n=args.n_val,
                        size=args.size or trained_on.get("size", 128), seed=seed)


def format_scores(scores: dict, class_names=None) -> str:
    """The four papers' columns and per-class IoU, in percent."""
    lines = [f"{label:<10} {100 * float(scores[key]):5.1f}%" for key, label in
             (("pixel_acc", "pixel acc"), ("mean_acc", "mean acc"), ("miou", "mIoU"), ("fwiou", "f.w. IoU"))]
    lines.append("per-class IoU:")
    iou = np.asarray(scores["iou"], dtype=float)
    names = list(class_names) if class_names is not None else [str(c) for c in range(len(iou))]
    for name, v in zip(names, iou):
        lines.append(f"  {name:<14} {'  n/a' if np.isnan(v) else f'{100 * v:5.1f}%'}")
    return "\n".join(lines)


def run_eval(args) -> int:
    return guarded("eval", _run_eval, args)


def _run_eval(args) -> int:
    check_flags(scales=(args.scales, 0.125, 4), size=(args.size, 16, MAX_SIDE),
                batch_size=(args.batch_size, 1, 1024), seed=(args.seed, 0, 2**32 - 1))
    check_device(args)
    if args.json:  # before the evaluation, not after minutes of it
        if Path(args.json).resolve() == Path(args.checkpoint).resolve():
            raise ValueError(f"--json {args.json} is the checkpoint being evaluated; write the scores to another file")
        check_output_file(args.json, "--json", args.overwrite)
    state = load_checkpoint(args.checkpoint)
    model = load_model(state, name=args.model, device=args.device)
    meta = state.get("meta") or {}
    dataset, description = eval_data(args, meta.get("data") or {})
    check_num_classes(state, dataset.num_classes, description)
    check_scoring_memory(model, dataset, scales=args.scales, batch_size=args.batch_size, crf=args.crf,
                         device=args.device)
    scores = evaluate(model, dataset, dataset.num_classes, device=args.device, normalize=checkpoint_normalize(state),
                      scales=args.scales, flip=args.flip, crf=checkpoint_crf(args.crf, meta),
                      batch_size=args.batch_size, progress=not args.no_progress)
    names = getattr(dataset, "class_names", None)
    print(f"{meta.get('name')} ({args.checkpoint}, step {state.get('step')}) on {description} ({len(dataset)} images); "
          f"scales {' '.join(f'{s:g}' for s in args.scales)}, flip {'on' if args.flip else 'off'}, "
          f"CRF {'on' if args.crf else 'off'}")
    print(format_scores(scores, names))
    if args.json:
        iou = [None if np.isnan(v) else float(v) for v in np.asarray(scores["iou"], dtype=float)]
        payload = {k: float(scores[k]) for k in ("pixel_acc", "mean_acc", "miou", "fwiou")}
        payload.update(iou=dict(zip(names or map(str, range(len(iou))), iou)), model=meta.get("name"),
                       checkpoint=str(args.checkpoint), step=state.get("step"), data=description, images=len(dataset),
                       scales=list(args.scales), flip=bool(args.flip), crf=bool(args.crf))
        atomic_write_bytes(args.json, (json.dumps(payload, indent=2) + "\n").encode())
    return 0
