"""Training: the papers' SGD recipe, checkpoints with exact resume, DDP.

Training (FCN Sec. 4.3, DeepLab v1 Sec. 5, DeepLab v2 Sec. 4.1):

- mini-batch SGD, momentum 0.9, weight decay 5e-4, cross-entropy summed over valid pixels and averaged, the
  void label 255 ignored;
- the "poly" learning-rate policy of DeepLab v2: lr_t = lr * (1 - t / steps) ** power, power = 0.9;
- the classifier layers (fc8 / score layers / ASPP classifiers, `model.classifier_parameters()`) learn 10x
  faster, as the papers' "lr_mult: 10" on the newly initialised layers;
- a model that returns a list (DeepLab v2 MSC in train mode: [fused, scale_1, scale_0.75, ...]) gets one loss
  per output, summed (not in the paper's text: v2 Sec. 3.2 only fuses the scales by max "both during
  training and testing");
- bf16 autocast on CUDA (no loss scaling needed with bf16's range), fp32 on CPU unless `bf16=True` (the teaching
  zoo's CPU runs: 1.4-1.5x per step on an AMD EPYC with AVX-512 BF16, benchmarks/RESULTS.md).

The data stream is a pure function of (seed, step): the sample order of epoch e is a torch.Generator
permutation seeded from (seed, e), and each item's random augmentation runs under a seed derived from
(seed, its position in the stream). So a resumed run sees exactly the batches the uninterrupted run would
have seen, with any number of loader workers and under DDP, where rank r takes every world_size-th sample of
each global batch. The remaining randomness (dropout) is restored from the RNG states in the checkpoint.
Evaluation is `dlcore.inference.evaluate`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dlcore import resolve_device
from dlcore.checkpoint import checkpoint_meta, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from dlcore.data.transforms import normalize as normalize_images
from dlcore.io import check_output_dir, lock_folder

__all__ = ["train", "poly_lr", "segmentation_loss", "param_groups", "StepSampler"]

IGNORE_INDEX = 255
CLASSIFIER_LR_MULT = 10.0
# What a resumed run must share with the checkpoint: changing any of these changes the trajectory.
SCHEDULE_KEYS = ("steps", "lr", "power", "momentum", "weight_decay", "batch_size", "seed", "bf16")
_RECORDED_LATER = {"bf16"}  # keys older checkpoints lack: there they had the value the device implies


def poly_lr(lr: float, step: int, steps: int, power: float = 0.9) -> float:
    """DeepLab v2's "poly" policy: lr * (1 - step / steps) ** power, for step = 0 .. steps - 1."""
    return lr * (1.0 - step / steps) ** power


# ------------------------------------------------------------------------------------------------- data stream

def _mix(*numbers: int) -> int:
    """A 63-bit seed from integers, the same in every process (unlike hash() of a str)."""
    digest = hashlib.blake2b(":".join(map(str, numbers)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class StepSampler:
    """Batches of (index, item_seed) for steps start .. stop-1 of an endless, epoch-by-epoch shuffled stream.

    Position p of the stream (p = step * batch_size + j) is sample perm_e[p % n] with e = p // n, perm_e a
    torch.Generator permutation seeded from (seed, e). Under DDP rank r takes the positions j = r, r + world, ...
    of each global batch, so the ranks' parts are disjoint and together make the single-process batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world
        self._perms: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms = {k: v for k, v in self._perms.items() if k >= epoch - 1}  # keep memory flat
            g = torch.Generator().manual_seed(_mix(self.seed, epoch))
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def batch(self, step: int) -> list[tuple[int, int]]:
        out = []
        for j in range(self.rank, self.batch_size, self.world):
            p = step * self.batch_size + j
            out.append((int(self.permutation(p // self.n)[p % self.n]), _mix(self.seed, p)))
        return out

    def __iter__(self):
        return (self.batch(step) for step in range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


@contextlib.contextmanager
def _seeded(seed: int):
    """Run a block with torch, NumPy and Python RNGs seeded from `seed`, and give the caller's states back after."""
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


class _Items(Dataset):
    """dataset[index] with `transform` applied under the item's own seed: augmentation independent of workers/ranks."""

    def __init__(self, dataset, transform=None):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        image, mask = self.dataset[index]
        if self.transform is not None:
            with _seeded(seed):
                image, mask = self.transform(image, mask)
        return torch.as_tensor(image), torch.as_tensor(mask)


def _collate(items):
    images, masks = zip(*items)
    sizes = sorted({tuple(im.shape) for im in images})
    if len(sizes) > 1:
        raise ValueError(f"a batch mixes image sizes {sizes}; crop them to one size with "
                         "transform=dlcore.data.transforms.train_transform(crop=...) (CLI: --crop)")
    image = images[0]
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"dataset items must be (image uint8 [3,H,W], mask int64 [H,W]); got an image "
                         f"{image.dtype} {tuple(image.shape)}")
    if masks[0].shape != image.shape[1:]:
        raise ValueError(f"mask {tuple(masks[0].shape)} and image {tuple(image.shape)} differ in size")
    return torch.stack(images), torch.stack(masks).long()


# ------------------------------------------------------------------------------------------------- distributed

def _distributed(device: torch.device):
    """(rank, world, local_rank, we_initialised) from torchrun's environment; init the process group if needed."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0, False
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    created = False
    if not dist.is_initialized():
        # gloo on CPU, nccl between GPUs (the backend torchrun users expect for each)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    return dist.get_rank(), dist.get_world_size(), local_rank, created


def _gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# ------------------------------------------------------------------------------------------------- training

def param_groups(model: nn.Module, lr: float) -> list[dict]:
    """Two groups: the backbone at lr, the classifier layers at 10 x lr (papers' lr_mult 10). Frozen params left out."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    get = getattr(model, "classifier_parameters", None)
    classifier_ids = {id(p) for p in get()} if callable(get) else set()
    base = [p for p in trainable if id(p) not in classifier_ids]
    head = [p for p in trainable if id(p) in classifier_ids]
    groups = [{"params": base, "lr": lr, "lr_mult": 1.0}]
    if head:
        groups.append({"params": head, "lr": lr * CLASSIFIER_LR_MULT, "lr_mult": CLASSIFIER_LR_MULT})
    return groups


def segmentation_loss(outputs, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the valid (non-255) pixels, averaged; a list of outputs (MSC) -> the sum of their losses.

    A batch whose pixels are all void gives 0 (not NaN), so one empty crop cannot poison the weights.
    """
    if isinstance(outputs, (list, tuple)):
        return sum(segmentation_loss(o, target) for o in outputs)
    logits = outputs.float()
    if logits.shape[-2:] != target.shape[-2:]:  # strided scores: the labels at the centres of their cells
        target = subsample_labels(target, logits.shape[-2:])
    valid = (target != IGNORE_INDEX).sum().clamp_min(1)
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum") / valid


def subsample_labels(target: torch.Tensor, size) -> torch.Tensor:
    """Label maps [B,H,W] -> [B,h,w]: each output cell takes the label at its centre (nearest, void stays void), as
    DeepLab v1 and v2 train against the ground truth subsampled by the output stride."""
    return F.interpolate(target[:, None].float(), size=tuple(size), mode="nearest-exact")[:, 0].to(target.dtype)


def _check_train_args(dataset, steps, batch_size, lr, power, checkpoint_dir, checkpoint_every, resume, world):
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} is the global batch and must split evenly over {world} processes; "
                         f"use a multiple of {world}")
    if not lr > 0 or not power >= 0:
        raise ValueError(f"lr must be > 0 and power >= 0, got lr={lr!r}, power={power!r}")
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0 (0 = only at the end), got {checkpoint_every}")
    if (checkpoint_every or resume) and checkpoint_dir is None:
        raise ValueError("checkpoint_every / resume need checkpoint_dir (where last.pt lives)")
    if checkpoint_dir is not None:  # a file there would fail only at the first checkpoint, after the steps
        check_output_dir(checkpoint_dir, "checkpoint_dir (--checkpoint-dir)")
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")


def _resume_state(path: Path, schedule: dict, meta: dict, model: nn.Module, frozen: frozenset) -> dict:
    state = load_checkpoint(path)
    saved = state.get("schedule") or {}
    recorded = {k: saved.get(k, schedule[k] if k in _RECORDED_LATER else None) for k in SCHEDULE_KEYS}
    changed = [f"{k}: checkpoint {recorded[k]!r}, now {schedule[k]!r}" for k in SCHEDULE_KEYS if recorded[k] != schedule[k]]
    if changed:
        raise ValueError(f"cannot resume {path} with a different schedule ({'; '.join(changed)}); "
                         "use the run's original settings, or another checkpoint dir for a new run")
    old, new = (state.get("meta") or {}), meta
    if not isinstance(old, dict):
        raise ValueError(f"cannot resume {path}: its meta is a {type(old).__name__}, not a dict")
    for key in ("name", "num_classes", "width", "options"):
        if old.get(key) != new.get(key):
            raise ValueError(f"cannot resume {path}: it was trained as {key}={old.get(key)!r}, "
                             f"this model has {key}={new.get(key)!r}; resume with the same model")
    # The data too (CLI: --data/--root/--split/--size and the number of items): other data is another run.
    # Checked where the checkpoint records it (older checkpoints may not record train_items).
    for key in ("data", "train_items"):
        if key in old and old.get(key) != new.get(key):
            raise ValueError(f"cannot resume {path}: it was trained on {key}={old.get(key)!r}, this run has "
                             f"{key}={new.get(key)!r}; resume with the run's original data options "
                             "(--size, --n-train, --root, --split), or use another checkpoint dir for a new run")
    try:  # a checkpoint may leave out the frozen weights (the model already holds them), nothing else
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
    except RuntimeError as e:
        raise ValueError(f"cannot resume {path}: its weights do not fit this model "
                         f"({' '.join(str(e).split())[:200]})") from None
    lacking = sorted(set(missing) - frozen)
    if lacking or unexpected:
        raise ValueError(f"cannot resume {path}: its weights do not fit this model (missing {lacking[:3]}, "
                         f"unexpected {unexpected[:3]}); resume with the same model")
    return state


def train(model: nn.Module, dataset, *, steps: int, batch_size: int = 8, lr: float = 1e-2, momentum: float = 0.9,
          weight_decay: float = 5e-4, power: float = 0.9, device="cpu", normalize: str = "imagenet",
          checkpoint_dir=None, checkpoint_every: int = 0, resume: bool = False, seed: int = 0, num_workers: int = 0,
          progress: bool = True, transform=None, meta: dict | None = None, on_step=None, bf16: bool | None = None,
          loss=segmentation_loss, frozen=()) -> dict:
    """Train `model` in place on `dataset` (items (uint8 [3,H,W], int64 [H,W])) for `steps` SGD steps.

    The recipe is in the module docstring. batch_size is the global batch (split over DDP processes).
    checkpoint_dir/last.pt is written every `checkpoint_every` steps and at the end (rank 0, atomically); the
    folder is locked for the run (`dlcore.io.lock_folder`: a second run there is refused with this one's pid);
    resume=True continues from it and ends with the weights the uninterrupted run would have had (a changed
    schedule or model is a ValueError). `transform(image, mask)` is applied per item (e.g. train_transform()).
    `on_step(step, loss)` is called after each finished step (step counts from 1). bf16: autocast the forward
    (default: on CUDA only). `loss(outputs, masks)` replaces the segmentation loss (the stand-in pre-training's
    classifier trains through this loop too). `frozen`: state keys the checkpoints leave out, weights that never change
    and that the caller rebuilds before resuming (the zoo's pre-trained stem: a checkpoint of a head stays small
    enough to commit between sittings). Returns {"step", "steps",
    "loss" (last step's), "losses" (this call's), "lr", "checkpoint", "seconds", "images_per_s", "resumed_from"}.
    """
    device = resolve_device(device)
    rank, world, local_rank, created = _distributed(device)
    try:
        if device.type == "cuda" and world > 1:
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        _check_train_args(dataset, steps, batch_size, lr, power, checkpoint_dir, checkpoint_every, resume, world)
        # one run per checkpoint folder: a second run there would overwrite the first one's last.pt
        locked = lock_folder(checkpoint_dir, "checkpoint_dir (--checkpoint-dir)") if checkpoint_dir is not None \
            and rank == 0 else contextlib.nullcontext()
        with locked:
            return _train(model, dataset, steps=int(steps), batch_size=int(batch_size), lr=float(lr),
                          momentum=momentum, weight_decay=weight_decay, power=power, device=device,
                          normalize=normalize, checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir),
                          checkpoint_every=int(checkpoint_every), resume=resume, seed=int(seed),
                          num_workers=num_workers, progress=progress and rank == 0, transform=transform, meta=meta,
                          on_step=on_step, rank=rank, world=world,
                          bf16=device.type == "cuda" if bf16 is None else bool(bf16), loss_fn=loss,
                          frozen=frozenset(frozen))
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(model, dataset, *, steps, batch_size, lr, momentum, weight_decay, power, device, normalize,
           checkpoint_dir, checkpoint_every, resume, seed, num_workers, progress, transform, meta, on_step,
           rank, world, bf16, loss_fn, frozen) -> dict:
    from tqdm.auto import tqdm

    model.to(device).train()
    meta = checkpoint_meta(model, meta, normalize)
    schedule = dict(steps=steps, lr=lr, power=power, momentum=momentum, weight_decay=weight_decay,
                    batch_size=batch_size, seed=seed, bf16=bf16)
    optimizer = torch.optim.SGD(param_groups(model, lr), lr=lr, momentum=momentum, weight_decay=weight_decay)
    path = None if checkpoint_dir is None else checkpoint_dir / "last.pt"
    start = 0
    if resume:
        state = _resume_state(path, schedule, meta, model, frozen)
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        ranks = state.get("rng") or []
        if ranks:  # each rank its own states when the world size is unchanged, else rank 0's
            set_rng_state(ranks[rank] if len(ranks) == world else ranks[0])
    elif path is not None and path.exists():
        raise ValueError(f"{path} already exists: pass resume=True (CLI --resume) to continue that run, "
                         "or choose another checkpoint dir (or delete it) for a new one")
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def checkpoint(step: int, loss: float | None) -> None:
        rngs = _gather(rng_state(), world)  # every rank's RNG, so each continues its own dropout stream
        if rank == 0:
            weights = {k: v for k, v in model.state_dict().items() if k not in frozen}
            save_checkpoint(path, model=weights, optimizer=optimizer.state_dict(), step=step,
                            schedule=schedule, rng=rngs, meta=meta, loss=loss)
        _barrier(world)

    sampler = StepSampler(len(dataset), batch_size, seed, start, steps, rank, world)
    # A private generator: creating the loader must not draw from the global RNG, or a resumed run's dropout
    # stream would be one draw off the uninterrupted run's.
    loader = DataLoader(_Items(dataset, transform), batch_sampler=sampler, collate_fn=_collate,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(_mix(seed, "workers")))
    losses, loss_value, lr_t = [], None, poly_lr(lr, start, steps, power)
    bar = tqdm(total=steps, initial=start, disable=not progress, desc=meta.get("name") or "train", dynamic_ncols=True)
    t0 = time.perf_counter()
    step = start
    for images, masks in loader:
        lr_t = poly_lr(lr, step, steps, power)
        for group in optimizer.param_groups:
            group["lr"] = lr_t * group.get("lr_mult", 1.0)
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs = net(normalize_images(images, mode=normalize))
        loss = loss_fn(outputs, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"the loss became {loss_value} at step {step}; lower the learning rate "
                                     f"(lr={lr}) or check the labels (classes 0..C-1, void 255)")
        losses.append(loss_value)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr_t:.2e}", refresh=False)
        bar.update(1)
        if on_step is not None:
            on_step(step, loss_value)
        if path is not None and checkpoint_every and step % checkpoint_every == 0 and step < steps:
            checkpoint(step, loss_value)
    bar.close()
    seconds = time.perf_counter() - t0
    if path is not None and step > start:
        checkpoint(step, loss_value)
    elif path is not None and resume:
        loss_value = state.get("loss")  # the run had already finished: nothing to do
    return {"step": step, "steps": steps, "loss": loss_value, "losses": losses, "lr": lr_t,
            "checkpoint": None if path is None else str(path), "seconds": seconds,
            "images_per_s": (step - start) * batch_size / seconds if seconds > 0 and step > start else 0.0,
            "resumed_from": start if resume else None}
