"""Checkpoints: one file per run (`last.pt`) holding everything a resumed run needs to continue bit for bit.

    save_checkpoint(path, **state)        atomic write (temporary file in the same folder, then os.replace)
    load_checkpoint(path) -> dict         torch.load(weights_only=True); clear errors for missing/corrupt files
    load_model(checkpoint, name=None)     rebuild the network with dlcore.models.build_model from the stored meta

A training checkpoint (written by `dlcore.engine.train`) holds

    format, version     "dlcore-checkpoint", 1
    model               the network's state_dict (the bare module's, also under DDP)
    optimizer           SGD state (momentum buffers) and param groups
    step                number of finished SGD steps
    schedule            steps, lr, power, momentum, weight_decay, batch_size, seed: what must not change on resume
    rng                 torch / CUDA / NumPy / Python RNG states, one entry per DDP rank
    meta                name, num_classes, width, options, normalize (+ anything passed as meta=)

Only tensors and plain Python values are stored, so `weights_only=True` (no arbitrary unpickling) reads it.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

FORMAT = "dlcore-checkpoint"
VERSION = 1
_RECREATE = "re-create it with `python -m dlcore train ...` (or dlcore.engine.save_checkpoint)"


def save_checkpoint(path, **state) -> Path:
    """Write `state` to `path` atomically: a killed process leaves the previous file intact, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"  # same folder: os.replace is then an atomic rename
    try:
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by `save_checkpoint` (weights_only=True) onto the CPU.

    Missing file -> FileNotFoundError naming it; anything torch cannot read, or a file that is not a dlcore
    checkpoint (no 'model' state_dict) -> ValueError "X is not a readable dlcore checkpoint (...)".
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train one with `python -m dlcore train "
                                f"--checkpoint-dir DIR` (it writes DIR/last.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds (zip, unpickling, EOF) for a damaged file
        reason = " ".join(str(e).split())[:200]
        raise ValueError(f"{path} is not a readable dlcore checkpoint ({type(e).__name__}: {reason}); "
                         f"{_RECREATE}") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ValueError(f"{path} is not a readable dlcore checkpoint (no 'model' state_dict in it); {_RECREATE}")
    return state


def checkpoint_meta(model: nn.Module, meta: dict | None = None, normalize: str = "imagenet") -> dict:
    """What `load_model` needs to rebuild `model`: its name, num_classes, width and options (+ `meta`)."""
    out = {"name": getattr(model, "name", None), "num_classes": getattr(model, "num_classes", None),
           "width": getattr(model, "width", None), "options": _plain_options(getattr(model, "options", None) or {}),
           "normalize": normalize}
    out.update(meta or {})
    return out


def _plain_options(options: dict) -> dict:
    """Build options a checkpoint can hold. `weights` (the ImageNet init) is dropped: the stored weights replace it,
    and rebuilding with it would read (or download) the ImageNet file again for nothing."""
    return {k: v for k, v in options.items()
            if k != "weights" and (v is None or isinstance(v, (bool, int, float, str, list, tuple, dict)))}


def load_model(checkpoint_or_path, name: str | None = None, device="cpu") -> nn.Module:
    """Rebuild the network a checkpoint was trained as (dlcore.models.build_model from its meta) with its weights.

    `name`, when given, must be the checkpoint's model: ValueError "checkpoint is for model A, not B" otherwise.
    Returns the model on `device`, in eval mode.
    """
    from dlcore.models import build_model

    state = checkpoint_or_path if isinstance(checkpoint_or_path, dict) else load_checkpoint(checkpoint_or_path)
    where = "" if isinstance(checkpoint_or_path, dict) else f" {checkpoint_or_path}"
    meta = state.get("meta") or {}
    if not meta.get("name"):
        raise ValueError(f"checkpoint{where} records no model name (meta['name']), so it cannot be rebuilt; "
                         "build the model yourself and load_state_dict(load_checkpoint(path)['model'])")
    if name is not None and name != meta["name"]:
        raise ValueError(f"checkpoint{where} is for model {meta['name']}, not {name}; "
                         f"pass --model {meta['name']} (or leave --model out)")
    options = dict(meta.get("options") or {})
    kwargs = {k: meta[k] for k in ("num_classes", "width") if meta.get(k) is not None}
    model = build_model(meta["name"], **kwargs, **options)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = " ".join(str(e).split())[:300]
        raise ValueError(f"checkpoint{where} does not fit {meta['name']} built with {kwargs} {options} ({first}); "
                         f"{_RECREATE}") from None
    from dlcore import resolve_device

    return model.to(resolve_device(device) if isinstance(device, str) else torch.device(device)).eval()


# ---------------------------------------------------------------------------------------------------- RNG states

def rng_state() -> dict:
    """This process's RNG states as tensors and plain values (weights_only-loadable; no numpy arrays)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "python": [py[0], list(py[1]), py[2]]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
