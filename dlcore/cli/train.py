"""`python -m dlcore train --model NAME [--data synthetic|voc] ... [--resume]`: `dlcore.train.train` from the shell."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset

from dlcore import resolve_device
from dlcore.cli.common import (MAX_SIDE, add_run_arguments, check_device, check_flags, command_error,
                               open_dataset)
from dlcore.data import transforms
from dlcore.io import check_output_dir, clean_stale_temporaries
from dlcore.measure import check_memory, training_bytes
from dlcore.models import build_model
from dlcore.train import IGNORE_INDEX, train


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="network name (dlcore.models.available())")
    p.add_argument("--data", choices=("synthetic", "voc"), default="synthetic",
                   help="training data (default synthetic)")
    p.add_argument("--root", help="VOC folder (holding VOCdevkit/VOC2012) for --data voc")
    p.add_argument("--split", default="train", help="VOC split: train or trainaug (default train)")
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier (0.25 for CPU runs)")
    p.add_argument("--steps", type=int, default=500, help="SGD steps (default 500)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="global batch size, split over DDP processes (default 8)")
    p.add_argument("--lr", type=float, default=1e-2,
                   help="base learning rate, poly policy; classifier layers get 10x (default 1e-2)")
    p.add_argument("--size", type=int, default=128, help="synthetic scene size in pixels (default 128)")
    p.add_argument("--n-train", type=int, default=1000, help="number of synthetic training scenes (default 1000)")
    p.add_argument("--crop", type=int, default=None,
                   help="random scale/crop/flip augmentation to CROP x CROP (VOC: default 321; synthetic: off "
                        "unless given)")
    p.add_argument("--normalize", choices=("imagenet", "caffe"), default="imagenet",
                   help="input normalisation (caffe for imported Caffe weights)")
    p.add_argument("--weights", default=None, help="backbone init: imagenet or a file (passed to build_model)")
    p.add_argument("--output-stride", type=int, default=None, help="8 or 16 (ResNet models)")
    p.add_argument("--checkpoint-dir", default="build/run", help="where last.pt is written (default build/run)")
    p.add_argument("--checkpoint-every", type=int, default=100,
                   help="checkpoint every N steps (default 100; 0 = at the end only)")
    p.add_argument("--resume", action="store_true", help="continue the run in --checkpoint-dir where it stopped")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the model init, the synthetic data and the sample order (default 0)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="data loader processes (default 0 for synthetic, min(8, CPUs) for VOC)")
    add_run_arguments(p)


class CheckedLabels(Dataset):
    """A VOC dataset whose every mask is checked to hold classes 0..C-1 or void 255, naming the file otherwise
    (cross_entropy would say only "Target 37 is out of bounds", from deep inside the training step)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.num_classes = dataset.num_classes
        self.class_names = getattr(dataset, "class_names", None)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image, mask = self.dataset[i]
        values = torch.unique(torch.as_tensor(mask))
        bad = values[(values != IGNORE_INDEX) & ((values < 0) | (values >= self.num_classes))]
        if len(bad):
            paths = getattr(self.dataset, "paths", None)
            where = paths(i)[1] if callable(paths) else f"item {i}"
            raise ValueError(f"label file {where} holds value(s) {bad.tolist()[:5]}, but the classes are "
                             f"0..{self.num_classes - 1} (255 = void); fix or remove that label file")
        return image, mask


def train_data(args):
    """(dataset, transform, what the checkpoint records of the data) from the train command's options."""
    dataset, _ = open_dataset(args.data, "train" if args.data == "synthetic" else args.split, root=args.root,
                              n=args.n_train, size=args.size, seed=args.seed)
    if args.data == "synthetic":
        info = {"data": "synthetic", "size": args.size, "seed": args.seed}
    else:
        dataset, info = CheckedLabels(dataset), {"data": "voc", "root": str(args.root)}
    crop = args.crop if args.crop is not None else (321 if args.data == "voc" else None)
    transform = None if crop is None else transforms.train_transform(crop=crop)
    return dataset, transform, info


def run_train(args) -> int:
    try:
        return _run_train(args)
    except KeyboardInterrupt:
        last = Path(args.checkpoint_dir) / "last.pt"
        fix = (f"continue from the last checkpoint with the same command and --resume ({last})" if last.is_file() else
               f"it stopped before its first checkpoint, so nothing was saved; run the same command again "
               f"(without --resume)")
        print(f"python -m dlcore train: interrupted; {fix}", file=sys.stderr)
        return 130
    except Exception as e:
        return command_error("train", e, args)


def _run_train(args) -> int:
    # the cheap checks first: a typo must not cost a data set build or a model
    check_flags(steps=(args.steps, 1, None), batch_size=(args.batch_size, 1, 4096), lr=(args.lr, 1e-9, 10),
                size=(args.size, 16, MAX_SIDE), crop=(args.crop, 16, MAX_SIDE),
                checkpoint_every=(args.checkpoint_every, 0, None), seed=(args.seed, 0, 2**32 - 1),
                num_workers=(args.num_workers, 0, 256))
    check_device(args)
    check_output_dir(args.checkpoint_dir, "--checkpoint-dir")
    if int(os.environ.get("RANK", "0")) == 0:  # the rank that writes last.pt; other nodes cannot see its PIDs
        clean_stale_temporaries(Path(args.checkpoint_dir) / "last.pt")  # what a killed run's checkpoint write left
    dataset, transform, info = train_data(args)
    options = {k: v for k, v in (("output_stride", args.output_stride), ("weights", args.weights)) if v is not None}
    torch.manual_seed(args.seed)  # the init too: the same command gives the same weights
    model = build_model(args.model, num_classes=dataset.num_classes, width=args.width, **options)
    side = args.crop or (321 if args.data == "voc" else args.size)  # what train_data crops to
    batch = args.batch_size // int(os.environ.get("WORLD_SIZE", "1"))  # per process
    check_memory(training_bytes(model, batch, side, side), resolve_device(args.device),
                 f"training {args.model} (--width {args.width:g}) on batches of {batch} x {side} x {side} pixels",
                 "lower --batch-size, --crop / --size or --width")
    workers = args.num_workers if args.num_workers is not None else (0 if args.data == "synthetic"
                                                                      else min(8, os.cpu_count() or 1))
    result = train(model, dataset, steps=args.steps, batch_size=args.batch_size, lr=args.lr, device=args.device,
                   normalize=args.normalize, checkpoint_dir=args.checkpoint_dir,
                   checkpoint_every=args.checkpoint_every, resume=args.resume, seed=args.seed,
                   num_workers=workers, progress=not args.no_progress, transform=transform,
                   meta={"data": info, "train_items": len(dataset)})
    if int(os.environ.get("RANK", "0")) == 0:
        loss = "n/a" if result["loss"] is None else f"{result['loss']:.4f}"
        print(f"{args.model}: step {result['step']}/{result['steps']}, loss {loss}, checkpoint {result['checkpoint']}")
    return 0
