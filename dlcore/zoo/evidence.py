"""What the notebooks call: the zoo's scores recomputed and checked against its records, mean ± sd over seeds,
orderings decided only where the gap exceeds the seed spread, and the claims checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dlcore.zoo.recipe import TINY, ZOO_DIR, ZooError, rebuild_command
from dlcore.zoo.store import _complete, claim_schedule, crf_settings, read_manifest, recorded, schedule_of
from dlcore.zoo.trunk import labels_of, load, probabilities, test_scenes
from dlcore.zoo.training import crf_refine, image_confusions, train_all

# The test scenes' labels (no CRF) that `evaluate` computed, by zoo file and checksum, so that `predictions`
# returns them without running the network again (notebook 06's by-size table reads every scene of every seed).
_LABELS: dict = {}
_LABELS_KEPT = 16  # the most recent ones: 6 MB each at 96 scenes of 256 x 256


def _labels_key(name: str, seed: int, zoo_dir: Path) -> tuple:
    sha = read_manifest(zoo_dir)["entries"].get(f"{name}-s{seed}", {}).get("sha256")
    return str(Path(zoo_dir).resolve()), name, seed, sha, schedule_of(zoo_dir)


def _keep_labels(key: tuple, labels: np.ndarray) -> None:
    _LABELS.pop(key, None)
    _LABELS[key] = labels.astype(np.uint8)
    while len(_LABELS) > _LABELS_KEPT:
        del _LABELS[next(iter(_LABELS))]  # the oldest


def evaluate(name: str, seeds=None, *, zoo_dir: Path = ZOO_DIR, check_crf: int = 2) -> dict:
    """Per seed: per-image confusions on the test scenes, {"none": [n_test,C,C], "crf": [n_crf,C,C] (crf_models)}.

    "none" is recomputed here from the shipped weights (seconds) on the schedule's first `n_check` test scenes (all
    when 0), and must equal what `zoo train` recorded; the table reads the record of every test scene. "crf" is the
    record (the CRF on every model and seed takes CPU-minutes), re-checked live on the first `check_crf` scenes of
    each seed. A mismatch (above 0.1% of pixels: float summation order may differ
    between machines) raises ZooError: the records are not of these weights.
    """
    out = {}
    if seeds is None:  # the seeds the zoo holds (all of SEEDS once `zoo train` has finished)
        seeds = seeds_of(name, zoo_dir)
        if not seeds:
            raise ZooError(f"the zoo holds no seed of {name}; run `{rebuild_command(name, zoo_dir)}`")
    n_check = schedule_of(zoo_dir).n_check or None
    for seed in seeds:
        model = load(name, seed, zoo_dir)
        data = test_scenes(zoo_dir, n_check)
        probs = probabilities(model, data)
        masks = data["masks"].numpy()
        labels = labels_of(probs)
        _keep_labels(_labels_key(name, seed, zoo_dir), labels)
        live = image_confusions(labels, masks, model.num_classes)
        rec = recorded(name, seed, zoo_dir)
        n_test = schedule_of(zoo_dir).n_test
        if len(rec["none"]) != n_test:
            raise ZooError(f"the recorded scores of {name}-s{seed} cover {len(rec['none'])} scenes, not the schedule's "
                           f"{n_test}; rebuild with `{rebuild_command(f'{name}-s{seed}', zoo_dir)}`")
        _same(live, rec["none"][:len(live)], f"{name}-s{seed} (no CRF)")
        result = {"none": rec["none"]}
        if "crf" in rec:
            n = min(check_crf, len(rec["crf"]))
            if n:
                again = image_confusions(crf_refine(data["images"][:n], probs[:n], crf_settings(name, zoo_dir)),
                                         masks[:n], model.num_classes)
                _same(again, rec["crf"][:n], f"{name}-s{seed} (CRF)")
            result["crf"] = rec["crf"]
        out[seed] = result
    return out


def seeds_of(name: str, zoo_dir: Path = ZOO_DIR) -> list[int]:
    """The seeds of zoo model `name` that are complete in `zoo_dir` (all of SEEDS once `zoo train` finished)."""
    return [s for s in schedule_of(zoo_dir).seeds if _complete(f"{name}-s{s}", Path(zoo_dir))]


def present(models: dict, zoo_dir: Path = ZOO_DIR) -> dict:
    """`models` ({label: name}) when the zoo holds every seed of each; else a ZooError naming each model that is
    missing or partly trained (with its step) and the command that finishes it: a table never silently loses a row."""
    from dlcore.zoo.store import partial_step

    seeds = schedule_of(zoo_dir).seeds
    lacking = []
    for label, name in models.items():
        done = seeds_of(name, zoo_dir)
        if len(done) == len(seeds):
            continue
        parts = [(s, partial_step(f"{name}-s{s}", Path(zoo_dir))) for s in seeds if s not in done]
        state = ", ".join(f"seed {s} " + (f"at step {p[0]}/{p[1]}" if p and p[0] >= 0 else "not trained")
                          for s, p in parts)
        lacking.append(f"{label} ({name}: {state}; `{rebuild_command(name, zoo_dir)}`)")
    if lacking:
        raise ZooError(f"the zoo in {zoo_dir} is not complete for this notebook: {'; '.join(lacking)}; "
                       f"`python -m dlcore zoo train` finishes them all (it resumes partial ones)")
    return dict(models)


def _same(live: np.ndarray, rec: np.ndarray, what: str) -> None:
    if live.shape != rec.shape:
        raise ZooError(f"the recorded scores of {what} cover {rec.shape[0]} scenes, not {live.shape[0]}; "
                       f"rebuild with `{rebuild_command(what.split(' ')[0])}`")
    moved = np.abs(live - rec).sum() / 2 / max(1, rec.sum())
    if moved > 1e-3:
        raise ZooError(f"the recorded scores of {what} differ from these weights' ({100 * moved:.2f}% of pixels); "
                       f"rebuild with `{rebuild_command(what.split(' ')[0])}`")


def miou(confusions: np.ndarray) -> float:
    """Mean IoU in percent of a stack of per-image confusions (one matrix over all pixels: the VOC protocol)."""
    from dlcore.metrics import scores_from_confusion

    return 100 * float(scores_from_confusion(confusions.sum(0))["miou"])


def class_iou(results: dict, key: str = "none") -> np.ndarray:
    """Per-class IoU in percent, [seeds, C], of one model's `evaluate` results (`key`: "none" or "crf")."""
    from dlcore.metrics import scores_from_confusion

    return np.stack([100 * scores_from_confusion(results[s][key].sum(0))["iou"] for s in results])


def class_table(results: dict, class_names, key: str = "none") -> tuple[str, list, list]:
    """Per-class IoU (mean over seeds) of each model in {label: evaluate(...)}, one row per model; and what the data
    must pass to order models at all: the (model, class) pairs at 0.0 IoU, and the classes above 95 in every model."""
    ious = {label: class_iou(r, key).mean(0) for label, r in results.items()}
    width = max(len(label) for label in ious) + 2
    rows = [" " * width + "".join(f"{n[:6]:>7}" for n in class_names)]
    rows += [f"{label:<{width}}" + "".join(f"{v:7.1f}" for v in iou) for label, iou in ious.items()]
    zero = [(label, class_names[c]) for label, iou in ious.items() for c in np.flatnonzero(np.round(iou, 1) == 0)]
    easy = [class_names[c] for c in np.flatnonzero((np.stack(list(ious.values())) > 95).all(0))]
    return "\n".join(rows), zero, easy


PLATEAU_GAIN = 1.0  # points: a schedule is long enough when its learning curve's last quarter adds less (issue 21)


def last_quarter_gain(curve) -> float:
    """Points of held-out mean IoU that the last quarter of a learning curve ([[step, miou], ...], as `zoo train`
    records it) added: the last point minus the mean of the points within 1/16 of the steps of the 3/4 mark. From
    one point to the next a curve on 64 scenes moves by about 2 points while the rate is high; the mean steadies
    the start, and at the end the rate has annealed to 0."""
    steps = np.array([p[0] for p in curve], dtype=float)
    values = np.array([p[1] for p in curve], dtype=float)
    mark = 0.75 * steps[-1]
    near = np.abs(steps - mark) <= steps[-1] / 16
    start = values[near].mean() if near.any() else values[np.abs(steps - mark).argmin()]
    return float(values[-1] - start)


def over_seeds(values) -> tuple[float, float]:
    """(mean, sample sd) over seeds; the sd of a single seed is nan (unknown, not zero)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def fmt(values) -> str:
    m, sd = over_seeds(values)
    return f"{m:.1f} ± {sd:.1f}" if len(values) > 1 else f"{m:.1f} (1 seed)"


def predictions(name: str, seed: int = 0, n: int = 4, *, crf: bool = False, zoo_dir: Path = ZOO_DIR):
    """(images uint8 [n,3,S,S], masks [n,S,S], labels [n,S,S]) of the first `n` test scenes, for figures;
    crf=True refines them with the model's cross-validated CRF."""
    model = load(name, seed, zoo_dir)  # checks the file against the manifest, also when the labels are kept
    data = test_scenes(zoo_dir, n)
    kept = _LABELS.get(_labels_key(name, seed, zoo_dir))
    if kept is not None and not crf and n <= len(kept):
        return data["images"], data["masks"], torch.as_tensor(kept[:n].astype(np.int64))
    probs = probabilities(model, data)
    labels = crf_refine(data["images"], probs, crf_settings(name, zoo_dir)) if crf else labels_of(probs)
    return data["images"], data["masks"], torch.as_tensor(labels)


def for_notebook(models, *, smoke: bool, retrain: bool, zoo_dir, retrain_dir) -> Path:
    """The zoo a notebook reads: `zoo_dir`; with retrain, `models` trained anew from the recipe into `retrain_dir`,
    on `zoo_dir`'s schedule (a folder holding another schedule's entries is refused); in smoke mode, the same path
    on the tiny schedule in a fresh temporary folder (every code path of the zoo runs, in seconds; the numbers mean
    nothing). Relative folders are the notebook's (`dlcore.viz.notebook_path`), wherever papermill was started."""
    from dlcore.viz import notebook_path

    zoo_dir, retrain_dir = notebook_path(zoo_dir), notebook_path(retrain_dir)
    if smoke:
        import atexit
        import shutil
        import tempfile

        retrain, retrain_dir = True, tempfile.mkdtemp(prefix="dlcore-zoo-smoke-")
        atexit.register(shutil.rmtree, retrain_dir, True)  # the tiny zoo goes with the kernel that made it
        claim_schedule(Path(retrain_dir), TINY)
    if not retrain:
        return Path(zoo_dir)
    if not smoke:  # retrained on the read zoo's own schedule (the converged one for zoo-next), never a mix
        claim_schedule(Path(retrain_dir), schedule_of(zoo_dir))
    train_all(list(models), force=True, zoo_dir=Path(retrain_dir), progress=not smoke, log=lambda *_: None)
    return Path(retrain_dir)
