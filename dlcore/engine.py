"""Training and evaluation loops: the papers' SGD recipe, checkpoints with exact resume, DDP, MSC/flip/CRF testing.

Training (FCN Sec. 4.1, DeepLab v1 Sec. 4.1, DeepLab v2 Sec. 4.1):

- mini-batch SGD, momentum 0.9, weight decay 5e-4, cross-entropy summed over valid pixels and averaged, the
  void label 255 ignored;
- the "poly" learning-rate policy of DeepLab v2: lr_t = lr * (1 - t / steps) ** power, power = 0.9;
- the classifier layers (fc8 / score layers / ASPP classifiers, `model.classifier_parameters()`) learn 10x
  faster, as the papers' "lr_mult: 10" on the newly initialised layers;
- a model that returns a list (DeepLab v2 MSC in train mode: [fused, scale_1, scale_0.75, ...]) gets one loss
  per output, summed (v2 Sec. 3.3: "the loss on each scale and on the fused map");
- bf16 autocast on CUDA (no loss scaling needed with bf16's range), fp32 on CPU.

The data stream is a pure function of (seed, step): the sample order of epoch e is a torch.Generator
permutation seeded from (seed, e), and each item's random augmentation runs under a seed derived from
(seed, its position in the stream). So a resumed run sees exactly the batches the uninterrupted run would
have seen, with any number of loader workers and under DDP, where rank r takes every world_size-th sample of
each global batch. The remaining randomness (dropout) is restored from the RNG states in the checkpoint.

Evaluation accumulates one confusion matrix over the dataset at full resolution (VOC protocol). Test-time
multi-scale inputs and flipping average the softmax probabilities (see `forward_probs`); the optional fully
connected CRF (DeepLab v1 Sec. 4) refines those probabilities.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dlcore.checkpoint import checkpoint_meta, load_checkpoint, load_model, rng_state, save_checkpoint, set_rng_state

__all__ = ["train", "evaluate", "predict_probs", "forward_probs", "poly_lr", "save_checkpoint", "load_checkpoint",
           "load_model", "add_train_arguments", "run_train", "add_eval_arguments", "run_eval"]

IGNORE_INDEX = 255
CLASSIFIER_LR_MULT = 10.0
# What a resumed run must share with the checkpoint: changing any of these changes the trajectory.
SCHEDULE_KEYS = ("steps", "lr", "power", "momentum", "weight_decay", "batch_size", "seed")


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

def _param_groups(model: nn.Module, lr: float) -> list[dict]:
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
    if logits.shape[-2:] != target.shape[-2:]:  # a net that returns strided scores: upsample them, as at test time
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    valid = (target != IGNORE_INDEX).sum().clamp_min(1)
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum") / valid


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
        from dlcore.io import check_output_dir

        check_output_dir(checkpoint_dir, "checkpoint_dir (--checkpoint-dir)")
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")


def _resume_state(path: Path, schedule: dict, meta: dict, model: nn.Module) -> dict:
    state = load_checkpoint(path)
    saved = state.get("schedule") or {}
    changed = [f"{k}: checkpoint {saved.get(k)!r}, now {schedule[k]!r}" for k in SCHEDULE_KEYS
               if saved.get(k) != schedule[k]]
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
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise ValueError(f"cannot resume {path}: its weights do not fit this model "
                         f"({' '.join(str(e).split())[:200]})") from None
    return state


def train(model: nn.Module, dataset, *, steps: int, batch_size: int = 8, lr: float = 1e-2, momentum: float = 0.9,
          weight_decay: float = 5e-4, power: float = 0.9, device="cpu", normalize: str = "imagenet",
          checkpoint_dir=None, checkpoint_every: int = 0, resume: bool = False, seed: int = 0, num_workers: int = 0,
          progress: bool = True, transform=None, meta: dict | None = None, on_step=None) -> dict:
    """Train `model` in place on `dataset` (items (uint8 [3,H,W], int64 [H,W])) for `steps` SGD steps.

    The recipe is in the module docstring. batch_size is the global batch (split over DDP processes).
    checkpoint_dir/last.pt is written every `checkpoint_every` steps and at the end (rank 0, atomically);
    resume=True continues from it and ends with the weights the uninterrupted run would have had (a changed
    schedule or model is a ValueError). `transform(image, mask)` is applied per item (e.g. train_transform()).
    `on_step(step, loss)` is called after each finished step (step counts from 1). Returns {"step", "steps",
    "loss" (last step's), "losses" (this call's), "lr", "checkpoint", "seconds", "images_per_s", "resumed_from"}.
    """
    from dlcore import resolve_device

    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    rank, world, local_rank, created = _distributed(device)
    try:
        if device.type == "cuda" and world > 1:
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        _check_train_args(dataset, steps, batch_size, lr, power, checkpoint_dir, checkpoint_every, resume, world)
        return _train(model, dataset, steps=int(steps), batch_size=int(batch_size), lr=float(lr), momentum=momentum,
                      weight_decay=weight_decay, power=power, device=device, normalize=normalize,
                      checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir),
                      checkpoint_every=int(checkpoint_every), resume=resume, seed=int(seed),
                      num_workers=num_workers, progress=progress and rank == 0, transform=transform, meta=meta,
                      on_step=on_step, rank=rank, world=world)
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(model, dataset, *, steps, batch_size, lr, momentum, weight_decay, power, device, normalize,
           checkpoint_dir, checkpoint_every, resume, seed, num_workers, progress, transform, meta, on_step,
           rank, world) -> dict:
    from tqdm.auto import tqdm

    from dlcore.data.transforms import normalize as normalize_images

    model.to(device).train()
    meta = checkpoint_meta(model, meta, normalize)
    schedule = dict(steps=steps, lr=lr, power=power, momentum=momentum, weight_decay=weight_decay,
                    batch_size=batch_size, seed=seed)
    optimizer = torch.optim.SGD(_param_groups(model, lr), lr=lr, momentum=momentum, weight_decay=weight_decay)
    path = None if checkpoint_dir is None else checkpoint_dir / "last.pt"
    start = 0
    if resume:
        state = _resume_state(path, schedule, meta, model)
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
            save_checkpoint(path, model=model.state_dict(), optimizer=optimizer.state_dict(), step=step,
                            schedule=schedule, rng=rngs, meta=meta, loss=loss)
        _barrier(world)

    sampler = StepSampler(len(dataset), batch_size, seed, start, steps, rank, world)
    # A private generator: creating the loader must not draw from the global RNG, or a resumed run's dropout
    # stream would be one draw off the uninterrupted run's.
    loader = DataLoader(_Items(dataset, transform), batch_sampler=sampler, collate_fn=_collate,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(_mix(seed, "workers")))
    cuda = device.type == "cuda"
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
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            outputs = net(normalize_images(images, mode=normalize))
        loss = segmentation_loss(outputs, masks)
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


# ------------------------------------------------------------------------------------------------- evaluation

def _check_scales(scales) -> tuple[float, ...]:
    scales = tuple(float(s) for s in scales)
    if not scales or not all(s > 0 for s in scales):
        raise ValueError(f"scales must be one or more positive factors (e.g. 0.5 0.75 1), got {scales}")
    return scales


def forward_probs(model: nn.Module, images: torch.Tensor, *, normalize: str = "imagenet", scales=(1.0,),
                  flip: bool = False) -> torch.Tensor:
    """Softmax probabilities float32 [B,L,H,W] at the input size for uint8 images [B,3,H,W] (model's device).

    Each scale s runs the net on the normalised images resized bilinearly to s x (H, W) (as the Caffe Interp
    layer of DeepLab v2's MSC), its logits are upsampled back to (H, W), and the softmax probabilities of all
    scales (and of the flipped images, flipped back) are AVERAGED. Why the mean of probabilities rather than
    DeepLab v2's max of logits: v2's max fusion is part of the MSC network and is learned jointly with it (the
    `-msc` models already fuse that way inside); a net trained at one scale is best combined as the mixture of
    its per-scale predictors, where one over-confident scale cannot overrule the others, and the mean stays a
    calibrated distribution for the CRF's unary -log P.
    """
    from dlcore.data.transforms import normalize as normalize_images

    h, w = images.shape[-2:]
    x = normalize_images(images, mode=normalize)
    total, count = None, 0
    for s in _check_scales(scales):
        xs = x if s == 1.0 else F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))),
                                              mode="bilinear", align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
                logits = model(xs.flip(-1) if flipped else xs)
            if isinstance(logits, (list, tuple)):  # an MSC net left in train mode: its fused map comes first
                logits = logits[0]
            logits = logits.float()
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            probs = logits.softmax(1)
            total = probs if total is None else total + probs
            count += 1
    return total / count


def _resolve(device) -> torch.device:
    from dlcore import resolve_device

    return resolve_device(device) if isinstance(device, str) else torch.device(device)


def predict_probs(model: nn.Module, image, *, device="cpu", normalize: str = "imagenet", scales=(1.0,),
                  flip: bool = False) -> torch.Tensor:
    """Softmax probabilities float32 CPU [L,H,W] for one uint8 image [3,H,W] (model moved to `device`, eval mode).

    `np.asarray(predict_probs(model, image)).argmax(0)` is the label map. Multi-scale/flip as `forward_probs`.
    """
    image = torch.as_tensor(image)
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"predict_probs takes one uint8 image [3,H,W], got {image.dtype} {tuple(image.shape)}; "
                         "for [H,W,3] arrays pass torch.from_numpy(a).permute(2, 0, 1)")
    device = _resolve(device)
    model.to(device).eval()
    with torch.inference_mode():
        probs = forward_probs(model, image[None].to(device), normalize=normalize, scales=scales, flip=flip)
    return probs[0].cpu()


def _crf_stage(crf):
    """crf option -> None, or a function (images uint8 [B,3,H,W], probs [B,L,H,W]) -> refined probs [B,L,H,W].

    None/False: off. True: dlcore.crf.dense_crf's defaults. dict: dense_crf parameters (iterations, w1,
    sigma_alpha, sigma_beta, w2, sigma_gamma, ...). A DenseCRF module: used as is. Any other callable:
    called per image as crf(image uint8 numpy [H,W,3], probs numpy [L,H,W]) -> probs [L,H,W].
    """
    if crf is None or crf is False:
        return None
    if callable(crf) and not isinstance(crf, nn.Module):
        def per_image(images, probs):
            out = []
            for image, p in zip(images, probs):
                q = crf(image.permute(1, 2, 0).cpu().numpy(), p.cpu().numpy())
                q = torch.as_tensor(np.asarray(q), dtype=torch.float32)
                if q.shape != p.shape:
                    raise ValueError(f"the crf callable returned shape {tuple(q.shape)}; it must return probs "
                                     f"[L,H,W] = {tuple(p.shape)}")
                out.append(q.to(p.device))
            return torch.stack(out)

        return per_image
    from dlcore.predict import build_crf  # DenseCRF: the batched, on-device form of dense_crf (same numbers)

    module = build_crf(crf)
    return lambda images, probs: module.to(probs.device)(images, probs)


def _batches(dataset, batch_size: int):
    """Consecutive items in batches of one image size (VOC images differ in size; evaluation is at full size)."""
    images, masks = [], []
    for i in range(len(dataset)):
        image, mask = dataset[i]
        image, mask = torch.as_tensor(image), torch.as_tensor(mask)
        if images and (len(images) == batch_size or image.shape != images[0].shape):
            yield torch.stack(images), torch.stack(masks)
            images, masks = [], []
        images.append(image)
        masks.append(mask.long())
    if images:
        yield torch.stack(images), torch.stack(masks)


def evaluate(model: nn.Module, dataset, num_classes: int, *, device="cpu", normalize: str = "imagenet",
             scales=(1.0,), flip: bool = False, crf=None, batch_size: int = 1, progress: bool = False) -> dict:
    """Score `model` on `dataset` with the VOC protocol: one confusion matrix over all pixels at full resolution.

    Returns dlcore.metrics' scores (pixel_acc, mean_acc, miou, fwiou, iou [C]) plus "confusion" (int64 [C,C],
    rows = ground truth). scales/flip: test-time multi-scale inputs and flipping (`forward_probs`: mean of
    probabilities). crf: see `_crf_stage` (None/False, True, dict of dense_crf parameters, DenseCRF, callable).
    The model is moved to `device` and put in eval mode.
    """
    from tqdm.auto import tqdm

    from dlcore.metrics import confusion_matrix, scores_from_confusion

    scales = _check_scales(scales)
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    device = _resolve(device)
    model.to(device).eval()
    refine = _crf_stage(crf)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    with torch.inference_mode(), tqdm(total=len(dataset), disable=not progress, desc="eval") as bar:
        for images, masks in _batches(dataset, int(batch_size)):
            images = images.to(device)
            probs = forward_probs(model, images, normalize=normalize, scales=scales, flip=flip)
            if probs.shape[1] != num_classes:
                raise ValueError(f"the model predicts {probs.shape[1]} classes but num_classes is {num_classes}")
            if refine is not None:
                probs = refine(images, probs)
            cm += np.asarray(confusion_matrix(probs.argmax(1).cpu(), masks, num_classes, ignore_index=IGNORE_INDEX))
            bar.update(len(images))
    out = dict(scores_from_confusion(cm))
    out["confusion"] = cm
    return out


# ------------------------------------------------------------------------------------------------- CLI

def _error(command: str, e: BaseException, args=None) -> int:
    """One line on stderr, `python -m dlcore COMMAND: problem; fix`; exit 2 for bad input, 1 for a failure while
    running; --debug re-raises (dlcore.io.command_error)."""
    from dlcore.io import command_error

    return command_error(command, e, args)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from dlcore.io import add_debug_argument

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
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the model init, the synthetic data and the sample order (default 0)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="data loader processes (default 0 for synthetic, min(8, CPUs) for VOC)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_argument(p)


def open_voc(root, split: str):
    """VOCSegmentation, with a split list that is not text named (Python's UnicodeDecodeError names no file)."""
    from dlcore.data import VOCSegmentation

    try:
        return VOCSegmentation(root, split=split)
    except UnicodeDecodeError as e:
        raise ValueError(f"the list of VOC split {split!r} under {root} (ImageSets/Segmentation/{split}.txt) is not "
                         f"a text file ({e.reason} at byte {e.start}); restore it from the VOC archive") from None


class _CheckedLabels(Dataset):
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


def _train_data(args):
    from dlcore.data import transforms

    if args.data == "synthetic":
        from dlcore.data import SyntheticScenes

        dataset = SyntheticScenes("train", n=args.n_train, size=args.size, seed=args.seed)
        info = {"data": "synthetic", "size": args.size, "seed": args.seed}
    else:
        if not args.root:
            raise ValueError("--data voc needs --root DIR (the folder holding VOCdevkit/VOC2012); "
                             "get it with `python -m dlcore download voc --root DIR`")
        dataset = _CheckedLabels(open_voc(args.root, args.split))
        info = {"data": "voc", "root": str(args.root)}
    crop = args.crop if args.crop is not None else (321 if args.data == "voc" else None)
    transform = None if crop is None else transforms.train_transform(crop=crop)
    return dataset, transform, info


def run_train(args) -> int:
    try:
        return _run_train(args)
    except KeyboardInterrupt:
        print(f"python -m dlcore train: interrupted; continue from the last checkpoint with the same command and "
              f"--resume ({args.checkpoint_dir}/last.pt)", file=sys.stderr)
        return 130
    except Exception as e:
        return _error("train", e, args)


def _run_train(args) -> int:
    from dlcore.checkpoint import parse_device
    from dlcore.io import check_output_dir, clean_stale_temporaries
    from dlcore.models import build_model

    # the cheap checks first: a typo must not cost a data set build or a model
    parse_device(args.device)
    check_output_dir(args.checkpoint_dir, "--checkpoint-dir")
    if int(os.environ.get("RANK", "0")) == 0:  # the rank that writes last.pt; other nodes cannot see its PIDs
        clean_stale_temporaries(Path(args.checkpoint_dir) / "last.pt")  # what a killed run's checkpoint write left
    dataset, transform, info = _train_data(args)
    options = {k: v for k, v in (("output_stride", args.output_stride), ("weights", args.weights)) if v is not None}
    torch.manual_seed(args.seed)  # the init too: the same command gives the same weights
    model = build_model(args.model, num_classes=dataset.num_classes, width=args.width, **options)
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


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    from dlcore.io import add_debug_argument

    p.add_argument("--checkpoint", required=True, help="checkpoint file (e.g. build/run/last.pt)")
    p.add_argument("--model", default=None, help="expected network name (checked against the checkpoint)")
    p.add_argument("--data", choices=("synthetic", "voc"), default=None,
                   help="evaluation data (default: what the checkpoint was trained on)")
    p.add_argument("--root", help="VOC folder (holding VOCdevkit/VOC2012) for --data voc")
    p.add_argument("--split", default="val", help="split to score (default val)")
    p.add_argument("--crf", action="store_true", help="refine with the fully connected CRF (the settings the checkpoint records, else dlcore.crf defaults)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="test-time input scales, e.g. 0.5 0.75 1")
    p.add_argument("--flip", action="store_true", help="also run the mirrored image (probabilities averaged)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--size", type=int, default=None, help="synthetic scene size (default: the training size)")
    p.add_argument("--n-val", type=int, default=100, help="number of synthetic validation scenes (default 100)")
    p.add_argument("--seed", type=int, default=None, help="synthetic data seed (default: the training seed)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (same-size images)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the scores to OUT as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_argument(p)


def _eval_data(args, trained_on: dict):
    trained_on = trained_on if isinstance(trained_on, dict) else {}
    data = args.data or trained_on.get("data", "synthetic")
    if data == "synthetic":
        from dlcore.data import SyntheticScenes

        size = args.size or trained_on.get("size", 128)
        seed = args.seed if args.seed is not None else trained_on.get("seed", 0)
        return SyntheticScenes(args.split, n=args.n_val, size=size, seed=seed), f"synthetic {args.split}"
    root = args.root or trained_on.get("root")
    if not root:
        raise ValueError("--data voc needs --root DIR (the folder holding VOCdevkit/VOC2012)")
    return open_voc(root, args.split), f"VOC {args.split}"


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


def _write_json(path, payload: dict) -> None:
    from dlcore.io import atomic_write

    text = (json.dumps(payload, indent=2) + "\n").encode()
    atomic_write(path, lambda f: f.write(text))


def _eval_crf(on: bool, meta: dict):
    """--crf: the CRF settings the checkpoint records (an imported release's), else DeepLab-LargeFOV's defaults."""
    return (meta.get("crf") or True) if on else None


def run_eval(args) -> int:
    try:
        return _run_eval(args)
    except Exception as e:
        return _error("eval", e, args)


def _run_eval(args) -> int:
    from dlcore.checkpoint import check_num_classes, parse_device
    from dlcore.io import check_output_file

    parse_device(args.device)
    _check_scales(args.scales)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.json:  # before the evaluation, not after minutes of it
        if Path(args.json).resolve() == Path(args.checkpoint).resolve():
            raise ValueError(f"--json {args.json} is the checkpoint being evaluated; write the scores to another file")
        check_output_file(args.json, "--json")
    state = load_checkpoint(args.checkpoint)
    model = load_model(state, name=args.model, device=args.device)
    meta = state.get("meta") or {}
    dataset, description = _eval_data(args, meta.get("data") or {})
    check_num_classes(state, dataset.num_classes, description)
    scores = evaluate(model, dataset, dataset.num_classes, device=args.device,
                      normalize=meta.get("normalize", "imagenet"), scales=args.scales, flip=args.flip,
                      crf=_eval_crf(args.crf, meta), batch_size=args.batch_size, progress=not args.no_progress)
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
        _write_json(args.json, payload)
    return 0
