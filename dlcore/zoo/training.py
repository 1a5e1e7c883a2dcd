"""Training the zoo: each model through `dlcore.train.train` (the papers' recipe, atomic checkpoints, exact resume) on
its own forward with the frozen stem memoised, its storage checked against fp32, the CRF cross-validated, the
scores recorded; `train_all` resumes what an interrupted run had not finished, to the step."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dlcore.io import atomic_write
from dlcore.zoo import memo
from dlcore.zoo.recipe import (CRF_ITERATIONS, MODELS, WIDTH, ZOO_DIR, ZooError, _split, build,
                               entry_names, pretrain_recipe, rebuild_command)
from dlcore.zoo.store import (_complete, _machine, _ok, _save_entry, _update_manifest, crf_recorded, crf_settings,
                              load_entry, locked, pack, read_manifest, schedule_of, unpack)
from dlcore.zoo.trunk import (frozen_keys, heldout_scenes, labels_of, load, probabilities, start_from_pretrained,
                              test_scenes)


def _seeded_model(name: str, seed: int, zoo_dir: Path) -> nn.Module:
    """Zoo model `name`, its fresh layers drawn from `seed`, started from the pre-trained classifier (and, for
    FCN's later stages, from the previous stage of the same seed: Sec. 4.2's staged training), its frozen part
    fixed and memoised."""
    from dlcore import seed_everything

    seed_everything(seed)
    model = start_from_pretrained(build(name), load_entry(f"pretrain-{MODELS[name].trunk}", zoo_dir))
    spec = MODELS[name]
    if spec.init_from is not None:  # shares every layer of the previous stage; the new score layer stays at zero
        model.load_state_dict(load_entry(f"{spec.init_from}-s{seed}", zoo_dir), strict=False)
    frozen = frozen_keys(model)
    for k, p in model.named_parameters():
        p.requires_grad_(k not in frozen)
    return memo.attach(model)


class _Remembered(torch.utils.data.Dataset):
    """A dataset whose items are made once and kept (the zoo's scenes: generating one costs more than a step's
    share of the memoised network)."""

    def __init__(self, dataset):
        self.dataset, self.items = dataset, {}

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        if i not in self.items:
            image, mask = self.dataset[i]
            self.items[i] = (image, mask.to(torch.uint8))  # classes < 255 and void 255 fit a byte
        image, mask = self.items[i]
        return image, mask.long()


_SCENES: dict = {}  # (n_train, size) -> the zoo's training scenes, kept for the next model this process trains


def train_model(name: str, seed: int, *, device="cpu", zoo_dir: Path = ZOO_DIR, progress: bool = True) -> dict:
    """Train zoo model `name` for `seed` and write zoo/NAME-sSEED.pt; returns its manifest record. Checkpoints go to
    zoo/partial/NAME-sSEED/ every `checkpoint_every` steps; a run stopped at any moment continues from the last.
    With the schedule's `curve_every`, its learning curve (mean IoU on `n_curve` held-out scenes, no CRF) is
    recorded as it trains: the evidence that the schedule reaches the plateau (its last quarter adds < 1 point)."""
    import json

    from dlcore.data import SyntheticScenes
    from dlcore.io import FolderInUse, atomic_write_bytes
    from dlcore.train import train

    schedule = schedule_of(zoo_dir)
    entry = f"{name}-s{seed}"
    steps = schedule.value(MODELS[name], "steps")
    partial = Path(zoo_dir) / "partial" / entry
    entries = read_manifest(zoo_dir)["entries"]
    started_from = {start: entries[start]["sha256"] for start in _starts(name, seed)}  # retraining these: stale
    resume = (partial / "last.pt").is_file()
    if resume and _partial_started_from(partial) != started_from:  # begun on an older pre-training: worthless
        print(f"{entry}: its partial run started from an older {', '.join(started_from)}; starting it again")
        shutil.rmtree(partial)
        resume = False
    sidecar = partial / "progress.json"  # the curve and the seconds of the run's earlier sittings
    progress_so_far = json.loads(sidecar.read_text()) if resume and sidecar.is_file() else {"curve": [], "seconds": 0}
    model = _seeded_model(name, seed, zoo_dir)
    key = (schedule.n_train, schedule.size)  # every model of a zoo trains on the same scenes: make them once
    if key not in _SCENES:
        _SCENES[key] = _Remembered(SyntheticScenes("train", n=schedule.n_train, size=schedule.size, seed=0))
    scenes = _SCENES[key]
    selection = heldout_scenes(zoo_dir, schedule.n_curve) if schedule.curve_every else None
    started = time.perf_counter()

    def record(step: int, loss: float) -> None:
        if selection is None or (step % schedule.curve_every and step != steps):
            return
        points = [p for p in progress_so_far["curve"] if p[0] < step] + [[step, round(_miou(model, selection), 2)]]
        model.train()  # probabilities() put it in eval mode; the next step trains again
        progress_so_far["curve"] = points
        atomic_write_bytes(sidecar, json.dumps({**progress_so_far, "seconds": round(
            progress_so_far["seconds"] + time.perf_counter() - started, 1)}).encode())

    frozen = frozen_keys(model)  # the pre-trained stem: the checkpoints leave it out, _seeded_model rebuilds it
    try:
        result = train(model, scenes, steps=steps, batch_size=schedule.batch, lr=schedule.lr, device=device,
                       seed=seed, checkpoint_dir=partial, checkpoint_every=schedule.checkpoint_every, resume=resume,
                       bf16=schedule.bf16, progress=progress, on_step=record, frozen=frozen,
                       meta={"zoo_entry": entry, "schedule": schedule.name, "started_from": started_from})
    except FolderInUse as e:
        raise _in_use(entry, e.pid, zoo_dir) from None
    model = model.cpu()
    state = {k: v.detach() for k, v in model.state_dict().items() if k not in frozen}
    stored, storage = _smallest_faithful(model, state, zoo_dir)
    info = {"kind": "model", "model": name, "seed": seed, "schedule": schedule.name, **storage,
            "train_seconds": round(progress_so_far["seconds"] + result["seconds"], 1),
            "recipe": {"build": asdict(MODELS[name]), "width": WIDTH, "size": schedule.size,
                       "n_train": schedule.n_train, "steps": steps, "batch_size": schedule.batch, "lr": schedule.lr,
                       "bf16": schedule.bf16, "loss": round(float(result["loss"]), 4)},
            "command": rebuild_command(entry), "machine": _machine(), "date": time.strftime("%Y-%m-%d"),
            "started_from": started_from}
    if selection is not None:
        info["curve"] = progress_so_far["curve"]
    _save_entry(entry, stored, info, zoo_dir)
    shutil.rmtree(partial, ignore_errors=True)  # the entry is complete: its checkpoint has done its job
    return info


def _partial_started_from(partial: Path) -> dict | None:
    """What the partial run in `partial` started from, as its checkpoint records it (None: not recorded)."""
    from dlcore.checkpoint import load_checkpoint

    return (load_checkpoint(partial / "last.pt").get("meta") or {}).get("started_from")


def _miou(model: nn.Module, data: dict) -> float:
    """Mean IoU in percent of `model` on the scenes `data`, without the CRF."""
    confusions = image_confusions(labels_of(probabilities(model, data)), data["masks"].numpy(), model.num_classes)
    return 100 * _miou_of(confusions, digits=None)


def _smallest_faithful(model: nn.Module, state: dict, zoo_dir: Path) -> tuple[dict, dict]:
    """A model's weights as stored: int8 kernels when they move mean IoU on the held-out scenes (never the test
    scenes: this is a choice) by at most 0.1 point against fp32, else fp16."""
    data = heldout_scenes(zoo_dir, schedule_of(zoo_dir).n_heldout)
    stored, storage, exact, change = _int8_if_faithful(model, state, lambda m: _miou(m, data))
    return stored, {"storage": storage, "heldout_miou_fp32": round(exact, 2),
                    "heldout_miou_change_stored": round(change, 3)}


def _int8_if_faithful(model: nn.Module, state: dict, measure, exact: float | None = None):
    """`state` packed with int8 kernels when that moves `measure(model)` (points) by at most 0.1 against `state`
    itself (its score `exact`, measured here when None), else fp16. Returns (stored, storage, exact, the stored
    copy's change); the model is left holding `state`."""
    state = {k: v.detach().clone() for k, v in state.items()}  # a state_dict shares the tensors that loading overwrites

    def score(weights: dict) -> float:
        model.load_state_dict(weights, strict=False)
        return measure(model)

    exact = score(state) if exact is None else exact
    stored = pack(state, int8=True)
    int8 = any(k.endswith("#q") for k in stored)  # no kernel large enough: the fp16 file is the int8 one
    change = score(unpack(stored)) - exact
    if int8 and abs(change) > 0.1:
        stored, int8 = pack(state), False
        change = score(unpack(stored)) - exact
    model.load_state_dict(state, strict=False)
    return stored, "int8 kernels + fp16" if int8 else "fp16", exact, change


class EntryInUse(ZooError):
    """Another `zoo train` process holds this entry's checkpoint folder."""


def _in_use(entry: str, pid: str, zoo_dir: Path) -> ZooError:
    return EntryInUse(f"zoo entry {entry} is being trained by another `zoo train` (pid {pid}); let it finish "
                      f"(`python -m dlcore zoo list --zoo-dir {zoo_dir}` shows its step), or stop it and run the "
                      "command again to continue from its last checkpoint")


def train_pretrained(arch: str, *, device="cpu", zoo_dir: Path = ZOO_DIR, progress: bool = True) -> dict:
    from dlcore.io import FolderInUse
    from dlcore.pretrain import pretrain

    schedule = schedule_of(zoo_dir)
    recipe = pretrain_recipe(arch, schedule)
    partial = Path(zoo_dir) / "partial" / f"pretrain-{arch}"
    try:
        result = pretrain(arch, **recipe, device=device, checkpoint_dir=partial, n_check=schedule.pretrain_check,
                          checkpoint_every=schedule.checkpoint_every, progress=progress)
    except FolderInUse as e:
        raise _in_use(f"pretrain-{arch}", e.pid, zoo_dir) from None
    stored, storage = _faithful_pretrained(result["model"], result["accuracy"], schedule.pretrain_check)
    info = {"kind": "pretrain", "arch": arch, "schedule": schedule.name, "train_seconds": result["seconds"],
            "recipe": recipe, "label_accuracy": round(result["accuracy"], 4), **storage,
            "command": rebuild_command(f"pretrain-{arch}"), "machine": _machine(), "date": time.strftime("%Y-%m-%d")}
    _save_entry(f"pretrain-{arch}", stored, info, zoo_dir)
    shutil.rmtree(partial, ignore_errors=True)
    return info


def _faithful_pretrained(model: nn.Module, accuracy: float, n_check: int) -> tuple[dict, dict]:
    """The classifier as stored: int8 kernels when they move its label accuracy (`n_check` held-out scenes, those
    that measured `accuracy`) by at most 0.1 point, else fp16. Every zoo model starts from the stored weights, so
    they are the pre-training."""
    from dlcore.pretrain import SceneLabels, label_accuracy

    val = SceneLabels(n_check, split="val")
    stored, storage, _, change = _int8_if_faithful(model, model.state_dict(), lambda m: 100 * label_accuracy(m, val),
                                                   exact=100 * accuracy)
    return stored, {"storage": storage, "label_accuracy_change_stored": round(change, 3)}


def image_confusions(labels: np.ndarray, masks: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [N,C,C]: one confusion matrix per image (rows = ground truth; void 255 left out)."""
    from dlcore.metrics import confusion_matrix

    return np.stack([np.asarray(confusion_matrix(torch.as_tensor(p), torch.as_tensor(m), num_classes))
                     for p, m in zip(labels, masks)])


def crf_refine(images: torch.Tensor, probs: torch.Tensor, params: dict) -> np.ndarray:
    """Labels [N,H,W] after the test-time CRF (`dlcore.crf.DenseCRF`) with `params` and CRF_ITERATIONS
    mean-field iterations, on the cached probabilities of each image (one lattice per image)."""
    return crf_refine_w1s(images, probs, params, [params["w1"]])[0]


def crf_refine_w1s(images: torch.Tensor, probs: torch.Tensor, params: dict, w1s) -> list[np.ndarray]:
    """`crf_refine` for each w1 of `w1s` (the other parameters as `params` says), each image's lattices built once."""
    from dlcore.crf import DenseCRF

    crf = DenseCRF(**{**params, "iterations": CRF_ITERATIONS, "w1": w1s[0]})
    labels = [[] for _ in w1s]
    for im, p in zip(images, probs):
        for out, q in zip(labels, crf.sweep_w1(im[None], p[None], w1s)):
            out.append(q[0].argmax(0).numpy())
    return [np.stack(out) for out in labels]


def crf_search(name: str, zoo_dir: Path = ZOO_DIR, progress: bool = True) -> dict:
    """Cross-validate w1, sigma_alpha, sigma_beta on the held-out scenes for seed 0's model (v1 Sec. 5). With the
    schedule's `crf_expand`, an optimum on the grid's edge widens the grid past that edge by a factor 2 until the
    optimum lies inside, at most `CRF_EXPANSIONS` times ("interior" says if it did). With its `crf_confirm`, the
    best settings are scored again on more held-out scenes (`confirm_crf`)."""
    model = load(name, 0, zoo_dir)
    schedule = schedule_of(zoo_dir)
    n_heldout = schedule.value(MODELS[name], "n_heldout")
    data = heldout_scenes(zoo_dir, n_heldout)
    probs = probabilities(model, data)
    axes = {k: sorted(v) for k, v in schedule.crf_grid}
    grid: dict = {}
    for _ in range(CRF_EXPANSIONS + 1):
        todo = [_key(p) for p in _points(axes) if _key(p) not in grid]
        grid |= score_crf_settings(todo, data, probs, model.num_classes, f"CRF search {name}", progress)
        best = max(grid, key=grid.get)
        edges = _edges(best, axes)
        if not (schedule.crf_expand and edges):
            break
        # A factor 2 on every axis: widening w1 by 1 left ResNet-101's optimum on the edge after three rounds
        # (w1 8 -> 9 added 0.03 points); a doubling passes such a flat optimum in a round or two.
        _widen(axes, edges)
    none = image_confusions(labels_of(probs), data["masks"].numpy(), model.num_classes)
    found = {"params": _params(best), "grid": grid, "heldout_scenes": n_heldout, "interior": not edges,
             "heldout_miou_without": _miou_of(none)}
    return confirm_crf(name, found, zoo_dir, progress) if schedule.crf_confirm else found


CRF_EXPANSIONS = 3
# Settings of the search that `confirm_crf` scores again: on 128 more held-out scenes, the best of the searched ones
# was among the search's 8 best for both LargeFOV and ResNet-101 (benchmarks/crf_selection.json).
CRF_FINALISTS = 8


def confirm_crf(name: str, found: dict, zoo_dir: Path = ZOO_DIR, progress: bool = True) -> dict:
    """`found` (a `crf_search` record) with its CRF_FINALISTS best settings scored again on the searched held-out
    scenes and the schedule's `crf_confirm` scenes after them, and the best of those chosen ("confirmed"). The 32
    searched scenes chose ResNet-101's setting 1.2 points behind the best on 128 more (benchmarks/RESULTS.md); a
    confirmed choice on the grid's edge tries the doubled setting past it, as the search does."""
    schedule = schedule_of(zoo_dir)
    model = load(name, 0, zoo_dir)
    n = found["heldout_scenes"] + schedule.crf_confirm
    data = heldout_scenes(zoo_dir, n)
    probs = probabilities(model, data)
    axes = _axes(found["grid"])
    todo = sorted(found["grid"], key=found["grid"].get, reverse=True)[:CRF_FINALISTS]
    grid, confirmed = dict(found["grid"]), {}
    for _ in range(CRF_EXPANSIONS + 1):
        for key, cms in crf_confusions(todo, data, probs, model.num_classes, f"CRF confirm {name}", progress).items():
            confirmed[key] = _miou_of(cms)
            grid.setdefault(key, _miou_of(cms[:found["heldout_scenes"]]))  # a setting past the searched grid
        best = max(confirmed, key=confirmed.get)
        edges = _edges(best, axes)
        if not (schedule.crf_expand and edges):
            break
        todo = [_key({**_params(best), k: _beyond(v, axes[k])}) for k, v in edges.items()]
        _widen(axes, edges)
    return {**found, "params": _params(best), "grid": grid, "confirmed": confirmed, "confirm_scenes": n,
            "interior": not edges}


def score_crf_settings(keys: list, data: dict, probs: torch.Tensor, num_classes: int, desc: str,
                       progress: bool) -> dict:
    """{key: mean IoU} of the CRF with each setting `key` ("w1/sigma_alpha/sigma_beta") on the scenes `data`."""
    return {k: _miou_of(cms) for k, cms in crf_confusions(keys, data, probs, num_classes, desc, progress).items()}


def crf_confusions(keys: list, data: dict, probs: torch.Tensor, num_classes: int, desc: str, progress: bool) -> dict:
    """{key: per-image confusions [N,C,C]} of the CRF with each setting `key` on the scenes `data`, whose network
    probabilities are `probs`: one lattice per image and (sigma_alpha, sigma_beta), all its w1s swept."""
    from tqdm.auto import tqdm

    masks, out = data["masks"].numpy(), {}
    widths = sorted({(_params(k)["sigma_alpha"], _params(k)["sigma_beta"]) for k in keys})
    for alpha, beta in tqdm(widths, desc=desc, disable=not progress):
        same = [k for k in keys if (_params(k)["sigma_alpha"], _params(k)["sigma_beta"]) == (alpha, beta)]
        params = {"sigma_alpha": alpha, "sigma_beta": beta}
        for key, labels in zip(same, crf_refine_w1s(data["images"], probs, params, [_params(k)["w1"] for k in same])):
            out[key] = image_confusions(labels, masks, num_classes)
    return out


def _miou_of(confusions: np.ndarray, digits: int | None = 5) -> float:
    """Mean IoU (a fraction, rounded to `digits`; None: exact) over the images of per-image confusions [N,C,C]."""
    from dlcore.metrics import scores_from_confusion

    miou = float(scores_from_confusion(confusions.sum(0))["miou"])
    return miou if digits is None else round(miou, digits)


def _points(axes: dict) -> list[dict]:
    import itertools

    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def _key(params: dict) -> str:
    return f"{params['w1']}/{params['sigma_alpha']}/{params['sigma_beta']}"


def _params(key: str) -> dict:
    return dict(zip(("w1", "sigma_alpha", "sigma_beta"), map(float, key.split("/"))))


def _axes(grid: dict) -> dict:
    """The values each parameter took in a searched grid."""
    return {k: sorted({_params(key)[k] for key in grid}) for k in ("w1", "sigma_alpha", "sigma_beta")}


def _edges(key: str, axes: dict) -> dict:
    """The parameters of setting `key` that lie on the edge of a grid axis of more than one value."""
    return {k: v for k, v in _params(key).items() if len(axes[k]) > 1 and v in (axes[k][0], axes[k][-1])}


def _beyond(v: float, axis: list) -> float:
    """The value one doubling past the edge of `axis` that v lies on."""
    return v * 2.0 if v == axis[-1] else v / 2.0


def _widen(axes: dict, edges: dict) -> None:
    """Each axis of `edges` one doubling past the edge its value lies on."""
    for k, v in edges.items():
        axes[k] = sorted(set(axes[k]) | {_beyond(v, axes[k])})


def _cross_validate_crf(model: str, seed: int, zoo_dir: Path, progress: bool, search: bool = True) -> None:
    """crf_search on seed 0's model, into the manifest; the other seeds are scored with what it found. Without
    `search` (seed 0's weights unchanged), a recorded search the schedule wants confirmed is only confirmed, and the
    seeds already scored with its earlier choice are scored again."""
    if not _ok(f"{model}-s0", zoo_dir):  # e.g. seed 0 still training in another `zoo train`
        raise ZooError(f"{model}-s{seed} is trained and saved, but its CRF scores need the settings "
                              f"cross-validated on seed 0, which is not trained yet: run `{rebuild_command(model + '-s0', zoo_dir)}`, "
                              f"then `python -m dlcore zoo train`, which keeps these weights and records the scores")
    # Two `zoo train` processes that finish seeds of one model (say seeds 0 and 1 side by side) would both search:
    # the second waits for the first's search and uses what it recorded.
    before = read_manifest(zoo_dir)["crf"].get(model)
    with locked(zoo_dir, f"crf-{model}"):
        if read_manifest(zoo_dir)["crf"].get(model) != before:  # searched by another process while we waited
            return
        if search or before is None:
            found = crf_search(model, zoo_dir, progress)
        else:
            found = confirm_crf(model, before, zoo_dir, progress)
        _update_manifest(zoo_dir, lambda manifest: manifest["crf"].__setitem__(model, found))
    if before is not None and found["params"] != before["params"]:
        for s in schedule_of(zoo_dir).seeds:  # recorded with the settings just replaced
            if s != seed and (Path(zoo_dir) / "scores" / f"{model}-s{s}.npz").is_file() and _ok(f"{model}-s{s}", zoo_dir):
                record_scores(model, s, zoo_dir)


def record_scores(name: str, seed: int, zoo_dir: Path = ZOO_DIR) -> dict:
    """Per-image confusion matrices on the test scenes, without the CRF (n_test) and with it (n_crf; the schedule's
    `crf_models`),
    stored in zoo/scores/NAME-sSEED.npz: the CRF is too slow to rerun for every model in a notebook's minutes,
    so notebooks read these and re-check a few images live (`check_recorded`)."""
    model = load(name, seed, zoo_dir)
    data = test_scenes(zoo_dir)
    probs = probabilities(model, data)
    masks = data["masks"].numpy()
    out = {"none": image_confusions(labels_of(probs), masks, model.num_classes)}
    schedule = schedule_of(zoo_dir)
    if name in schedule.crf_models:
        params = crf_settings(name, zoo_dir)
        n = schedule.value(MODELS[name], "n_crf")
        out["crf"] = image_confusions(crf_refine(data["images"][:n], probs[:n], params), masks[:n],
                                      model.num_classes)
    path = Path(zoo_dir) / "scores" / f"{name}-s{seed}.npz"
    atomic_write(path, lambda f: np.savez_compressed(f, **{k: v.astype(np.int32) for k, v in out.items()}))
    return out


def _starts(model: str, seed: int) -> list[str]:
    """The entries a model's seed starts from: the pre-trained classifier, and FCN's previous stage (same seed)."""
    spec = MODELS[model]
    return [f"pretrain-{spec.trunk}"] + ([f"{spec.init_from}-s{seed}"] if spec.init_from else [])


def _prerequisites(entries: set, zoo_dir: Path) -> set:
    """The entries `entries` start from (pre-trained trunk, FCN's earlier stages) that are not complete yet."""
    need, todo = set(), [e for e in entries if not e.startswith("pretrain-")]
    while todo:
        for start in _starts(*_split(todo.pop())):
            if start not in entries and start not in need and not _complete(start, zoo_dir):
                need.add(start)
                todo += [] if start.startswith("pretrain-") else [start]
    return need


def train_all(only=None, *, force: bool = False, device="cpu", zoo_dir: Path = ZOO_DIR, progress: bool = True,
              log=print) -> list[str]:
    """Train every zoo entry that is missing or altered (or only those in `only`; with force, again even when
    complete), then its scores and the CRF search; an interrupted run resumes with the entries it had not
    finished. Returns the entries trained."""
    names = entry_names(schedule_of(zoo_dir))
    if only:
        models = schedule_of(zoo_dir).models or tuple(MODELS)
        unknown = [n for n in only if n not in names and n not in models]
        if unknown:
            raise ValueError(f"unknown zoo entry {unknown[0]!r}; known: {', '.join(names)} "
                             f"(or a model name for all its seeds: {', '.join(models)})")
    wanted = set(names)
    if only:
        wanted = {n for n in names if n in only or (not n.startswith("pretrain-") and _split(n)[0] in only)}
        wanted |= _prerequisites(wanted, zoo_dir)
    done, elsewhere = [], []
    for entry in names:
        if entry not in wanted or (not (force and only) and _complete(entry, zoo_dir)):
            continue
        try:
            info = _train_entry(entry, force=force and bool(only), device=device, zoo_dir=zoo_dir, progress=progress)
        except EntryInUse as e:  # another `zoo train` has it: go on with the rest, and say so at the end
            log(str(e))
            elsewhere.append(entry)
            continue
        done.append(entry)
        log(f"{entry}: {info['seconds']:.0f} s ({info['train_seconds']} s training)")
    if elsewhere:
        raise ZooError(f"{', '.join(elsewhere)} {'is' if len(elsewhere) == 1 else 'are'} being trained by another "
                       f"`zoo train`; the rest is done ({len(done)} trained)")
    return done


def _train_entry(entry: str, *, force: bool, device, zoo_dir: Path, progress: bool) -> dict:
    """Train one entry (or finish its CRF search and scores); its record, with the seconds this took."""
    t0 = time.perf_counter()
    if entry.startswith("pretrain-"):
        info = train_pretrained(entry.removeprefix("pretrain-"), device=device, zoo_dir=zoo_dir, progress=progress)
    else:
        model, seed = _split(entry)
        # A run stopped after saving the weights but before the scores: keep the weights, finish the rest.
        trained = not force and _ok(entry, zoo_dir)
        info = read_manifest(zoo_dir)["entries"][entry] if trained else \
            train_model(model, seed, device=device, zoo_dir=zoo_dir, progress=progress)
        searched = seed == 0 and not trained
        if model in schedule_of(zoo_dir).crf_models and (searched or not crf_recorded(model, zoo_dir)):
            _cross_validate_crf(model, seed, zoo_dir, progress, search=searched)
        record_scores(model, seed, zoo_dir)
    return {**info, "seconds": time.perf_counter() - t0}
