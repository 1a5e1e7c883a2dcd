"""Checkpoints: one file per run (`last.pt`) holding everything a resumed run needs to continue bit for bit.

    save_checkpoint(path, **state)        atomic write (dlcore.io.atomic_write: temporary, fsync, os.replace)
    load_checkpoint(path) -> dict         torch.load(weights_only=True) after the file's CRC-32s are verified;
                                          clear errors for missing, damaged or foreign files
    read_torch_file(path, what, fix)      the same verified load for any torch file (ImageNet weights)
    load_model(checkpoint, name=None)     rebuild the network with dlcore.models.build_model from the stored meta,
                                          after checking the meta, finite weights and their shapes
    checkpoint_normalize(checkpoint)      the input normalization its weights expect ("caffe" for imported ones)

A training checkpoint (written by `dlcore.train.train`) holds

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

import math
import numbers
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dlcore import resolve_device
from dlcore.io import atomic_write

FORMAT = "dlcore-checkpoint"
VERSION = 1
_RECREATE = "re-create it with `python -m dlcore train ...` (or dlcore.checkpoint.save_checkpoint)"


def save_checkpoint(path, **state) -> Path:
    """Write `state` to `path` atomically: a killed process leaves the previous file intact, never half a file."""
    return atomic_write(path, lambda f: torch.save({"format": FORMAT, "version": VERSION, **state}, f))


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by `save_checkpoint` (weights_only=True) onto the CPU, its CRC-32s verified.

    Missing file -> FileNotFoundError naming it; anything torch cannot read, a damaged file (a flipped bit: see
    `read_torch_file`), or a file that is not a dlcore checkpoint (no 'model' state_dict) -> ValueError
    "X is not a readable dlcore checkpoint (...)".
    """
    path = Path(path)
    if path.is_dir():
        hint = f"; did you mean {path / 'last.pt'}?" if (path / "last.pt").is_file() else ""
        raise ValueError(f"checkpoint {path} is a folder, not a checkpoint file{hint} (give the .pt file)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train one with `python -m dlcore train "
                                f"--checkpoint-dir DIR` (it writes DIR/last.pt)")
    state = read_torch_file(path, "dlcore checkpoint", _RECREATE)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ValueError(f"{path} is not a readable dlcore checkpoint (no 'model' state_dict in it); {_RECREATE}")
    return state


def read_torch_file(path, what: str, fix: str, legacy_ok: bool = False):
    """torch.load(path, weights_only=True) onto the CPU, after verifying the file.

    torch.save writes a zip archive with a CRC-32 per record, but torch.load does not check them, so a flipped
    bit in a weight loads silently (and turns a trained network into a wrong one). Every record is read and
    checked here first. A file in torch's legacy (pre-zip) format carries no checksums: accepted only with
    `legacy_ok` (published ImageNet weights are in it); dlcore's own checkpoints are always zips.
    Every problem is a ValueError "PATH is not a readable WHAT (reason); FIX", with no torch paragraph.
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
            if damaged is not None:
                raise ValueError(f"{path} is not a readable {what} (its record {damaged} fails its CRC-32 check: the "
                                 "file was damaged on disk or in a copy); use an intact copy, or " + fix)
        elif not legacy_ok:
            raise ValueError(f"{path} is not a readable {what} (it is not the zip archive torch.save writes, so its "
                             f"content cannot be verified); {fix}")
        elif _first_bytes(path, 2) != b"\x80\x02":  # the legacy format opens with a protocol-2 pickle
            raise ValueError(f"{path} is not a readable {what} (it is not a file torch.save writes); {fix}")
        return torch.load(path, map_location="cpu", weights_only=True)
    except ValueError:
        raise
    except pickle.UnpicklingError as e:
        reason = ("it holds pickled Python objects other than tensors and plain values, which dlcore does not load "
                  "(nothing in it was run)" if "Weights only load failed" in str(e) else f"UnpicklingError: {e}")
        raise ValueError(f"{path} is not a readable {what} ({reason[:200]}); {fix}") from None
    except Exception as e:  # torch and zipfile raise many kinds (zip, EOF, CRC, unpickling) for a damaged file
        reason = " ".join(str(e).split())[:200]
        raise ValueError(f"{path} is not a readable {what} ({type(e).__name__}: {reason}); {fix}") from None


def _first_bytes(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


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


# The keyword arguments a checkpoint's meta["crf"] may hold (dlcore.crf.DenseCRF's).
CRF_KEYS = ("iterations", "w1", "sigma_alpha", "sigma_beta", "w2", "sigma_gamma", "normalization", "max_memory_bytes")


def check_meta(meta, where: str = "") -> dict:
    """The meta of a checkpoint, its types checked (a hand-edited or foreign file gives a ValueError, not a
    TypeError deep inside build_model)."""
    meta = {} if meta is None else meta
    bad = lambda what: ValueError(f"checkpoint{where} has a malformed meta: {what}; {_RECREATE}")  # noqa: E731
    if not isinstance(meta, dict):
        raise bad(f"a {type(meta).__name__}, not a dict")
    if meta.get("name") is not None and not isinstance(meta["name"], str):
        raise bad(f"name {meta['name']!r} is not a str")
    nc = meta.get("num_classes")
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, numbers.Integral) or nc < 1):
        raise bad(f"num_classes {nc!r} is not an integer >= 1")
    width = meta.get("width")
    if width is not None and (isinstance(width, bool) or not isinstance(width, numbers.Real)
                              or not math.isfinite(width) or width <= 0):
        raise bad(f"width {width!r} is not a finite number > 0")
    if not isinstance(meta.get("options") or {}, dict):
        raise bad(f"options {meta['options']!r} is not a dict of build_model options")
    crf = meta.get("crf")
    if crf is not None and not isinstance(crf, (bool, dict)):
        raise bad(f"crf {crf!r} is not a dict of DenseCRF parameters")
    if isinstance(crf, dict) and set(crf) - set(CRF_KEYS):
        raise bad(f"crf has unknown key(s) {sorted(set(crf) - set(CRF_KEYS))}; DenseCRF takes {list(CRF_KEYS)}")
    return meta


def check_finite(state_dict: dict, where: str = "") -> None:
    """Refuse NaN / Inf weights: such a network predicts one class everywhere and looks like a trained one."""
    for key, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"checkpoint{where} holds NaN or Inf values in {key}: the run that wrote it diverged "
                             "(lower the learning rate) or the file was damaged; use an earlier checkpoint or retrain")


def _check_shapes(state_dict: dict, name: str, kwargs: dict, options: dict, where: str) -> None:
    """Compare the weights' shapes with the network the meta describes, built on the meta device (no memory),
    so a meta with a wrong width or class count is refused before gigabytes are allocated for it."""
    from dlcore.models import build_model

    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in build_model(name, **kwargs, **options).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state_dict.items() if torch.is_tensor(v)}
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    wrong = [k for k in want if k in have and want[k] != have[k]]
    if missing or unexpected or wrong:
        detail = (f"{wrong[0]} is {have[wrong[0]]} in the weights but {want[wrong[0]]} in that network" if wrong else
                  f"{len(missing)} weight(s) missing {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}")
        raise ValueError(f"checkpoint{where}: its weights do not fit {name} built with {kwargs} {options} as its "
                         f"meta says ({detail}); the meta's width / num_classes / options are not those of its "
                         f"weights. {_RECREATE}")


def load_model(checkpoint_or_path, name: str | None = None, device="cpu") -> nn.Module:
    """Rebuild the network a checkpoint was trained as (dlcore.models.build_model from its meta) with its weights.

    `name`, when given, must be the checkpoint's model: ValueError "checkpoint is for model A, not B" otherwise.
    Checked before any memory is spent on the network: the meta's types, that every weight is finite, and that
    the weights' shapes are those of the network the meta describes. Returns the model on `device`, in eval mode.
    """
    from dlcore.models import build_model

    state = checkpoint_or_path if isinstance(checkpoint_or_path, dict) else load_checkpoint(checkpoint_or_path)
    where = "" if isinstance(checkpoint_or_path, dict) else f" {checkpoint_or_path}"
    meta = check_meta(state.get("meta"), where)
    if not meta.get("name"):
        raise ValueError(f"checkpoint{where} records no model name (meta['name']), so it cannot be rebuilt; "
                         "build the model yourself and load_state_dict(load_checkpoint(path)['model'])")
    if name is not None and name != meta["name"]:
        raise ValueError(f"checkpoint{where} is for model {meta['name']}, not {name}; "
                         f"pass --model {meta['name']} (or leave --model out)")
    device = resolve_device(device)
    options = dict(meta.get("options") or {})
    kwargs = {k: meta[k] for k in ("num_classes", "width") if meta.get(k) is not None}
    check_finite(state["model"], where)
    try:
        _check_shapes(state["model"], meta["name"], kwargs, options, where)
    except TypeError as e:  # an option build_model does not take
        raise ValueError(f"checkpoint{where} records options {options} that {meta['name']} does not take ({e}); "
                         f"{_RECREATE}") from None
    model = build_model(meta["name"], **kwargs, **options)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = " ".join(str(e).split())[:300]
        raise ValueError(f"checkpoint{where} does not fit {meta['name']} built with {kwargs} {options} ({first}); "
                         f"{_RECREATE}") from None
    return model.to(device).eval()


def checkpoint_normalize(checkpoint) -> str:
    """The input normalization a checkpoint's weights expect: meta "normalize" ("caffe" for imported Caffe models)."""
    meta = checkpoint.get("meta", {}) if isinstance(checkpoint, dict) else {}
    return meta.get("normalize", "imagenet")


def check_num_classes(checkpoint: dict, num_classes: int, description: str) -> None:
    """One check for every command that scores a checkpoint on a dataset (eval, crf-search): same class count."""
    predicts = (checkpoint.get("meta") or {}).get("num_classes")
    if predicts is not None and predicts != num_classes:
        raise ValueError(f"the checkpoint predicts {predicts} classes, the {description} data has {num_classes}; "
                         "evaluate on the data it was trained for (--data / --root)")


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
