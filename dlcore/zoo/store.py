"""The zoo's files: weights packed fp16/int8 and sha256-checked against zoo/manifest.json, written atomically
(file first, then its record under a lock), and the per-image score records."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import platform
from pathlib import Path

import numpy as np
import torch

from dlcore.io import atomic_write
from dlcore.zoo.recipe import (FORMAT, FULL, SCHEDULES, ZOO_DIR, Schedule, ZooError, _split, pretrain_recipe,
                               rebuild_command)

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(zoo_dir: Path = ZOO_DIR) -> dict:
    path = Path(zoo_dir) / "manifest.json"
    if not path.is_file():
        return {"format": FORMAT, "version": 1, "entries": {}, "crf": {}}
    if path.is_dir():
        raise ZooError(f"{path} is a folder, not the zoo manifest; remove it, then restore the manifest from git "
                       f"(`git checkout {path.name}`) or rebuild the zoo with `python -m dlcore zoo train`")
    try:
        manifest = json.loads(path.read_text(), object_pairs_hook=_no_duplicates)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZooError(f"{path} is not valid JSON ({e}); restore it from git (`git checkout {path.name}`) or "
                       f"rebuild the zoo with `python -m dlcore zoo train`") from None
    except _Repeated as e:
        raise ZooError(f"{path} names the key {e} twice (json would keep the last one without a word); restore it "
                       f"from git (`git checkout {path.name}`) or rebuild the zoo with `python -m dlcore zoo train`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ZooError(f"{path} is not a dlcore zoo manifest; restore it from git or rebuild with "
                       f"`python -m dlcore zoo train`")
    if not isinstance(manifest.get("entries"), dict) or not isinstance(manifest.get("crf", {}), dict):
        raise ZooError(f"{path} has no 'entries' table (or a damaged one); restore it from git "
                       f"(`git checkout {path.name}`) or rebuild the zoo with `python -m dlcore zoo train`")
    if manifest.get("schedule", FULL.name) not in SCHEDULES:
        raise ZooError(f"{path} names an unknown schedule {manifest.get('schedule')!r} (known: {', '.join(SCHEDULES)}); "
                       f"restore it from git or rebuild the zoo with `python -m dlcore zoo train`")
    return manifest


class _Repeated(Exception):
    pass


def _no_duplicates(pairs: list) -> dict:
    """A JSON object whose keys are unique."""
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise _Repeated(repr(repeated[0]))
    return dict(pairs)


def schedule_of(zoo_dir: Path = ZOO_DIR) -> Schedule:
    """The schedule a zoo was trained on, as its manifest names it (the shipped zoo: "full")."""
    return SCHEDULES[read_manifest(zoo_dir).get("schedule", FULL.name)]


def claim_schedule(zoo_dir: Path, schedule: Schedule) -> None:
    """Make `zoo_dir` a zoo of `schedule`, or refuse when it holds entries trained on another one: a zoo never mixes
    two schedules (a tiny entry would otherwise count as complete in a full zoo)."""
    manifest = read_manifest(zoo_dir)
    current = manifest.get("schedule", FULL.name if manifest["entries"] else None)
    if current not in (None, schedule.name):
        raise ZooError(f"{zoo_dir} holds a zoo trained on the {current!r} schedule; train the {schedule.name!r} "
                       f"schedule into another folder (--zoo-dir)")
    if manifest.get("schedule") != schedule.name:
        _update_manifest(zoo_dir, lambda m: m.__setitem__("schedule", schedule.name))


def _write_manifest(manifest: dict, zoo_dir: Path) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    atomic_write(Path(zoo_dir) / "manifest.json", lambda f: f.write(text.encode()))


INT8_MIN_NUMEL = 1 << 14  # tensors this large (conv kernels, not biases or batch norm) may be stored as int8 (40 MB)


def pack(state: dict, int8: bool = False) -> dict:
    """Tensors as stored: fp16, or (int8=True, large float tensors) int8 with one fp32 scale per output channel
    (`KEY#q`, `KEY#scale`). `train_model` keeps int8 only where it moves val mean IoU by at most 0.1 point."""
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if int8 and v.is_floating_point() and v.numel() >= INT8_MIN_NUMEL:
            scale = v.flatten(1).abs().amax(1).clamp_min(1e-12) / 127
            shape = (-1,) + (1,) * (v.ndim - 1)
            out[f"{k}#q"] = (v / scale.view(shape)).round().clamp(-127, 127).to(torch.int8).contiguous()
            out[f"{k}#scale"] = scale.float()
        else:
            out[k] = (v.half() if v.is_floating_point() else v).contiguous()
    return out


def unpack(stored: dict) -> dict:
    """`pack`'s inverse: fp32 tensors (int64 buffers stay as they are)."""
    state = {}
    for k, v in stored.items():
        if k.endswith("#scale"):
            continue
        if k.endswith("#q"):
            base = k.removesuffix("#q")
            scale = stored[f"{base}#scale"]
            state[base] = v.float() * scale.view((-1,) + (1,) * (v.ndim - 1))
        else:
            state[k] = v.float() if v.is_floating_point() else v
    return state


def _save_entry(name: str, stored: dict, info: dict, zoo_dir: Path) -> None:
    """`pack`ed tensors to zoo/NAME.pt (atomically), then its manifest record (atomically): file first, so a
    manifest never names a file that is not complete."""
    zoo_dir = Path(zoo_dir)
    path = zoo_dir / f"{name}.pt"
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "name": name, "state": stored}, f))
    record = {**info, "file": path.name, "sha256": _sha256(path), "bytes": path.stat().st_size}
    _update_manifest(zoo_dir, lambda manifest: manifest["entries"].__setitem__(name, record))


@contextlib.contextmanager
def locked(zoo_dir: Path, name: str):
    """Hold the exclusive lock ZOO_DIR/.NAME.lock for the `with` block; a second process waits. flock, so a process
    that dies releases it."""
    import fcntl

    Path(zoo_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(zoo_dir) / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _update_manifest(zoo_dir: Path, change) -> None:
    """Read, change and write the manifest under an exclusive lock, so that two `zoo train` processes (say one
    for the VGG-16 models, one for ResNet-101's) never lose each other's records."""
    with locked(zoo_dir, "manifest"):
        manifest = read_manifest(zoo_dir)
        change(manifest)
        _write_manifest(manifest, zoo_dir)


def _machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def load_entry(name: str, zoo_dir: Path = ZOO_DIR) -> dict:
    """The fp32 state dict of zoo file `name`, after checking it against the manifest (sha256, name)."""
    zoo_dir = Path(zoo_dir)
    path = zoo_dir / f"{name}.pt"
    stamp = path.stat() if path.is_file() else None
    manifest = (zoo_dir / "manifest.json").read_bytes() if (zoo_dir / "manifest.json").is_file() else b""
    key = (str(path.resolve()), stamp and (stamp.st_mtime_ns, stamp.st_size), hashlib.sha256(manifest).hexdigest())
    return {k: v.clone() for k, v in _load_entry_checked(name, zoo_dir, key).items()}


@functools.lru_cache(maxsize=64)
def _load_entry_checked(name: str, zoo_dir: Path, key: tuple) -> dict:
    """`load_entry`'s work, remembered while the file and the manifest stay as they were (`key`)."""
    if not zoo_dir.is_dir():  # a typo in ZOO_DIR is not a zoo to rebuild
        state = "is a file, not a folder" if zoo_dir.exists() else "does not exist"
        raise ZooError(f"zoo folder {zoo_dir} {state}; give the zoo's folder (the repository's zoo/: {ZOO_DIR})")
    info = read_manifest(zoo_dir)["entries"].get(name)
    path = zoo_dir / f"{name}.pt"
    fix = f"rebuild it with `{rebuild_command(name, zoo_dir)}`"
    if info is None:
        raise ZooError(f"the zoo manifest ({zoo_dir / 'manifest.json'}) has no entry {name!r}; {fix}")
    _own_file(name, info)
    if not path.is_file():
        raise ZooError(f"zoo file {path} is missing; {fix} (or restore it: `git checkout {path.name}`)")
    if _sha256(path) != info["sha256"]:
        raise ZooError(f"zoo file {path} does not match its sha256 in the manifest (altered or truncated); {fix}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several kinds for a damaged file
        raise ZooError(f"zoo file {path} cannot be read ({type(e).__name__}); {fix}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or blob.get("name") != name:
        raise ZooError(f"zoo file {path} holds {blob.get('name') if isinstance(blob, dict) else 'something else'!r}, "
                       f"not {name!r}; {fix}")
    stale = stale_starts(name, zoo_dir)
    if stale == [name]:
        raise ZooError(f"zoo file {path} was pre-trained on another recipe than the zoo's schedule asks "
                       f"(steps, rate); {fix}")
    if stale:
        raise ZooError(f"zoo file {path} was trained from another {' and '.join(stale)} than the zoo holds now (its "
                       f"frozen layers would not be the ones it learnt on); {fix}")
    return unpack(blob["state"])


def stale_starts(name: str, zoo_dir: Path) -> list[str]:
    """The entries that `name` started from (the pre-trained classifier, FCN's previous stage) whose file has changed
    since `name` was trained: its record's `started_from` sha256s against the manifest's now. A pre-trained
    classifier trained on another recipe than the zoo's schedule asks (steps, rate, ...) is stale itself ([name])."""
    manifest = read_manifest(zoo_dir)
    entries, info = manifest["entries"], manifest["entries"].get(name) or {}
    if info.get("kind") == "pretrain" and info.get("recipe") != pretrain_recipe(info["arch"], schedule_of(zoo_dir)):
        return [name]
    started = info.get("started_from", {})
    return [start for start, sha in started.items() if (entries.get(start) or {}).get("sha256") != sha]


def crf_settings(name: str, zoo_dir: Path = ZOO_DIR) -> dict:
    """The CRF parameters cross-validated for zoo model `name` (dense_crf keyword arguments)."""
    found = read_manifest(zoo_dir)["crf"].get(name)
    if found is None:
        raise ZooError(f"the zoo manifest has no CRF settings for {name!r}; run `{rebuild_command(name + '-s0', zoo_dir)}`")
    return dict(found["params"])


def crf_recorded(name: str, zoo_dir: Path = ZOO_DIR) -> bool:
    """Is model `name`'s CRF cross-validated, and (the schedule's `crf_confirm`) confirmed on more scenes?"""
    found = read_manifest(zoo_dir)["crf"].get(name)
    return found is not None and (not schedule_of(zoo_dir).crf_confirm or "confirmed" in found)


def recorded(name: str, seed: int, zoo_dir: Path = ZOO_DIR) -> dict:
    """The per-image confusions `record_scores` stored: {"none": [n_test,C,C], "crf": [n_crf,C,C] (crf_models)}."""
    path = Path(zoo_dir) / "scores" / f"{name}-s{seed}.npz"
    if not path.is_file():
        raise ZooError(f"{path} is missing; rebuild it with `{rebuild_command(f'{name}-s{seed}', zoo_dir)}`")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k].astype(np.int64) for k in z.files}


def _ok(name: str, zoo_dir: Path) -> bool:
    """Is entry `name`'s file there and equal to its manifest checksum? (With a damaged manifest none is.)"""
    try:
        info = read_manifest(zoo_dir)["entries"].get(name)
    except ZooError:
        return False
    if info is None:
        return False
    if not isinstance(info, dict) or not {"file", "sha256"} <= set(info):
        raise ZooError(f"the zoo manifest's entry {name!r} lacks its file name or sha256; restore manifest.json "
                       f"from git or rebuild the entry with `{rebuild_command(name, zoo_dir)}`")
    _own_file(name, info)
    path = Path(zoo_dir) / info["file"]
    return path.is_file() and _sha256(path) == info["sha256"] and not stale_starts(name, zoo_dir)


def _own_file(name: str, info: dict) -> None:
    """A manifest entry names its own file in the zoo folder (NAME.pt), never another path (`../x`, `/etc/...`)."""
    if not isinstance(info, dict) or info.get("file") != f"{name}.pt":
        raise ZooError(f"the zoo manifest's entry {name!r} names the file {info.get('file') if isinstance(info, dict) else info!r}, "
                       f"not {name}.pt; restore manifest.json from git (`git checkout manifest.json`) or rebuild the "
                       f"entry with `{rebuild_command(name)}`")


def partial_step(entry: str, zoo_dir: Path) -> tuple[int, int] | None:
    """(steps done, steps) of an entry whose training stopped part-way (its resumable checkpoint), else None."""
    path = Path(zoo_dir) / "partial" / entry / "last.pt"
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return int(state["step"]), int(state["schedule"]["steps"])
    except Exception:  # a damaged checkpoint: `zoo train` says so, and what to delete
        return -1, -1


def _complete(entry: str, zoo_dir: Path) -> bool:
    """The entry's file is there and intact, and (models) so are its recorded scores and CRF settings."""
    if not _ok(entry, zoo_dir):
        return False
    if entry.startswith("pretrain-"):
        return True
    model, seed = _split(entry)
    crf_ok = model not in schedule_of(zoo_dir).crf_models or crf_recorded(model, zoo_dir)
    return crf_ok and (Path(zoo_dir) / "scores" / f"{entry}.npz").is_file()
