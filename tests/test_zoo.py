"""The teaching zoo: the memoised stem gives the network's own output, the files are checked, training resumes to
the step, and a zoo carries its schedule."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dlcore import zoo
from dlcore.data.transforms import normalize


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """A whole zoo on the tiny schedule, built once by the command line (as CI must, so the recipe cannot rot)."""
    out = tmp_path_factory.mktemp("zoo")
    run = subprocess.run([sys.executable, "-m", "dlcore", "zoo", "train", "--schedule", "tiny", "--zoo-dir", str(out)],
                         capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    return out


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_memoised_stem_gives_the_networks_own_output(name):
    """A zoo network with its frozen stem memoised returns what the plain network returns, in train mode too (the
    stem's batch norm stays frozen), for images seen before and new ones in one batch; the memo keeps each once."""
    torch.manual_seed(0)
    model = zoo.build(name).eval()
    x = normalize(torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8))
    with torch.no_grad():
        plain = model(x)
        zoo.memo.attach(model)
        model(x[:2])
        memoised = model(x)
    assert memoised.shape == plain.shape
    assert torch.allclose(memoised, plain, rtol=1e-4, atol=1e-5 * plain.abs().max().item()), (memoised - plain).abs().max()
    scales = len(getattr(model, "scales", (1,)))
    assert len(model.backbone.stem_memo) == 3 * scales
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.train()
    model(x)
    frozen = zoo.frozen_keys(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items() if k in frozen)


def test_pack_roundtrip_int8_is_close_and_fp16_exact_enough():
    w = torch.randn(512, 64, 7, 7)
    state = {"fc6.weight": w, "fc6.bias": torch.randn(512), "bn.num_batches_tracked": torch.tensor(3)}
    back = zoo.unpack(zoo.pack(state, int8=True))
    assert back["bn.num_batches_tracked"].dtype == torch.int64
    assert (back["fc6.weight"] - w).abs().max() <= w.abs().amax((1, 2, 3)).max() / 127 / 2 + 1e-6
    assert torch.allclose(zoo.unpack(zoo.pack(state))["fc6.weight"], w, atol=1e-2)


def test_tiny_zoo_loads_every_model(tiny_zoo):
    manifest = json.loads((tiny_zoo / "manifest.json").read_text())
    assert manifest["schedule"] == "tiny" and zoo.schedule_of(tiny_zoo) == zoo.TINY
    assert set(manifest["entries"]) == set(zoo.entry_names(zoo.TINY))
    for entry, info in manifest["entries"].items():
        for key in ("sha256", "recipe", "command", "machine", "train_seconds", "schedule"):
            assert key in info, (entry, key)
    assert not (tiny_zoo / "partial").exists() or not list((tiny_zoo / "partial").iterdir())
    curve = manifest["entries"]["deeplab-v1-largefov-s0"]["curve"]  # the learning curve, every `curve_every` steps
    assert [p[0] for p in curve] == [1, 2] and all(0 <= p[1] <= 100 for p in curve)
    for name in zoo.TINY.crf_models:
        assert set(manifest["crf"][name]["params"]) == {"w1", "sigma_alpha", "sigma_beta"}
    model = zoo.load("fcn8s", 1, tiny_zoo)
    assert not model.training
    rec = zoo.recorded("deeplab-v1-largefov", 0, tiny_zoo)
    assert rec["none"].shape == (zoo.TINY.n_test, 11, 11) and rec["crf"].shape == (zoo.TINY.n_crf, 11, 11)


def test_fcn_final_upsampling_stays_fixed_bilinear_in_the_zoo(tiny_zoo):
    """FCN Sec. 4.3 fixes the final upsampling to bilinear: the zoo neither trains nor stores it."""
    from dlcore.heads import bilinear_kernel

    for name, layer, factor in (("fcn32s", "upscore", 32), ("fcn8s", "upscore8", 8)):
        key = f"head.{layer}.weight"
        model = zoo.training._seeded_model(name, 0, tiny_zoo)
        assert key in zoo.frozen_keys(model) and not model.state_dict(keep_vars=True)[key].requires_grad
        assert key not in zoo.load_entry(f"{name}-s0", tiny_zoo)
        weight = zoo.load(name, 0, tiny_zoo).state_dict()[key]
        assert torch.equal(weight, bilinear_kernel(factor).expand_as(weight))


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage", ["missing", "truncated", "altered", "other_model", "not_in_manifest"])
def test_bad_zoo_files_name_the_file_and_the_rebuild_command(tiny_zoo, tmp_path, damage):
    d = _copy(tiny_zoo, tmp_path / "z")
    target = d / "deeplab-v1-largefov-s0.pt"
    if damage == "missing":
        target.unlink()
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:1000])
    elif damage == "altered":
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        target.write_bytes(bytes(raw))
    elif damage == "other_model":  # another model's file, manifest made to match it
        target.write_bytes((d / "deeplab-v1-4x4-s0.pt").read_bytes())
        m = json.loads((d / "manifest.json").read_text())
        m["entries"]["deeplab-v1-largefov-s0"]["sha256"] = m["entries"]["deeplab-v1-4x4-s0"]["sha256"]
        (d / "manifest.json").write_text(json.dumps(m))
    else:
        m = json.loads((d / "manifest.json").read_text())
        del m["entries"]["deeplab-v1-largefov-s0"]
        (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(zoo.ZooError) as e:
        zoo.load("deeplab-v1-largefov", 0, d)
    assert "deeplab-v1-largefov-s0" in str(e.value)
    assert "python -m dlcore zoo train --only deeplab-v1-largefov-s0" in str(e.value)


def test_unknown_only_lists_the_known_names(tmp_path):
    run = subprocess.run([sys.executable, "-m", "dlcore", "zoo", "train", "--only", "deeplab-v9", "--schedule", "tiny",
                          "--zoo-dir", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 2
    assert "unknown zoo entry 'deeplab-v9'" in run.stderr and "deeplab-v1-largefov" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_tiny_schedule_refuses_the_shipped_zoo():
    run = subprocess.run([sys.executable, "-m", "dlcore", "zoo", "train", "--schedule", "tiny"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "--zoo-dir" in run.stderr


def test_interrupted_write_leaves_nothing_and_the_rerun_resumes(tiny_zoo, tmp_path, monkeypatch):
    d = _copy(tiny_zoo, tmp_path / "z")
    (d / "deeplab-v1-7x7-s1.pt").unlink()
    (d / "scores" / "fcn8s-s1.npz").unlink()
    before = (d / "manifest.json").read_text()

    def killed(obj, f, *a, **k):
        f.write(b"half a file")
        raise KeyboardInterrupt

    real_save = torch.save
    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        zoo.train_all(zoo_dir=d, progress=False, log=lambda *_: None)
    assert not list(d.glob(".*.tmp")) and not (d / "deeplab-v1-7x7-s1.pt").exists()
    assert (d / "manifest.json").read_text() == before
    assert (d / "scores" / "fcn8s-s1.npz").is_file()  # its weights were intact: scored again before the kill, not retrained
    monkeypatch.setattr(torch, "save", real_save)
    done = zoo.train_all(zoo_dir=d, progress=False, log=lambda *_: None)
    assert done == ["deeplab-v1-7x7-s1"]  # only what was missing
    assert zoo.train_all(zoo_dir=d, progress=False, log=lambda *_: None) == []


def test_a_run_stopped_before_the_scores_keeps_the_weights(tiny_zoo, tmp_path, monkeypatch):
    """Weights saved, scores (and seed 0's CRF search) not yet: `zoo train` records them without training again; a
    later seed whose CRF settings need an untrained seed 0 says so, naming both commands."""
    d = _copy(tiny_zoo, tmp_path / "z")
    name = "deeplab-v1-largefov"
    (d / "scores" / f"{name}-s1.npz").unlink()
    weights = (d / f"{name}-s1.pt").read_bytes()
    monkeypatch.setattr(zoo.training, "train_model", lambda *a, **k: pytest.fail("trained again"))
    assert zoo.train_all(zoo_dir=d, progress=False, log=lambda *_: None) == [f"{name}-s1"]
    assert (d / "scores" / f"{name}-s1.npz").is_file() and (d / f"{name}-s1.pt").read_bytes() == weights

    zoo.store._update_manifest(d, lambda m: (m["crf"].pop(name), m["entries"].pop(f"{name}-s0")))
    (d / "scores" / f"{name}-s1.npz").unlink()
    with pytest.raises(zoo.ZooError, match=rf"{name}-s1 is trained and saved.*--only {name}-s0.*zoo train`"):
        zoo.train_all([f"{name}-s1"], zoo_dir=d, progress=False, log=lambda *_: None)


def test_shipped_zoo_is_intact_and_within_budget():
    """The zoo in the repository: every entry the manifest names matches its sha256 and has its score records (and
    CRF settings where the notebooks show the CRF); all of it fits the 40 MB budget. Entries not trained yet are
    named by `python -m dlcore zoo list` and by the notebooks, which skip their rows."""
    if not (zoo.ZOO_DIR / "manifest.json").is_file():
        pytest.skip("no shipped zoo in this checkout (python -m dlcore zoo train builds it)")
    entries = zoo.read_manifest()["entries"]
    bad = [e for e in entries if not zoo.store._complete(e, zoo.ZOO_DIR)]
    assert not bad, f"zoo entries altered or without their records: {bad}; rebuild with python -m dlcore zoo train"
    assert {"pretrain-vgg16", "pretrain-resnet101"} <= set(entries)
    sizes = sum((zoo.ZOO_DIR / i["file"]).stat().st_size for i in entries.values())
    sizes += sum(p.stat().st_size for p in (zoo.ZOO_DIR / "scores").glob("*.npz"))
    assert sizes <= 40e6, f"the zoo holds {sizes / 1e6:.1f} MB; the budget is 40 MB"


def test_branch_labels_fused_map_is_the_models_own_prediction(tiny_zoo):
    """Notebook 07's per-scale measurement of MSC reads the same network: its fused map is the model's output."""
    model = zoo.load("deeplab-v2-resnet101-largefov-msc", 0, tiny_zoo)
    data = zoo.test_scenes(tiny_zoo)
    labels = zoo.branch_labels(model, data)
    assert set(labels) == {f"scale {s}" for s in model.scales} | {"fused (max)"}
    np.testing.assert_array_equal(labels["fused (max)"], zoo.probabilities(model, data).argmax(1).numpy())


def test_labels_of_is_argmax_over_the_classes_ties_included():
    probs = torch.rand(3, 5, 7, 6)
    probs[:, 3] = probs[:, 1]  # exact ties: the first maximum wins, as in argmax(1)
    assert np.array_equal(zoo.trunk.labels_of(probs), probs.argmax(1).numpy())


def test_predictions_reuse_what_evaluate_computed(tiny_zoo, monkeypatch):
    name = "deeplab-v1-largefov"
    fresh = zoo.predictions(name, 0, zoo.TINY.n_test, zoo_dir=tiny_zoo)[2]
    zoo.evaluate(name, seeds=[0], zoo_dir=tiny_zoo, check_crf=0)
    monkeypatch.setattr(zoo.evidence, "probabilities", lambda *a, **k: pytest.fail("ran the network again"))
    images, masks, kept = zoo.predictions(name, 0, 2, zoo_dir=tiny_zoo)
    assert kept.dtype == torch.int64 and torch.equal(kept, fresh[:2]) and len(images) == len(masks) == 2


def _killed_before_step_3(name: str, zoo_dir, monkeypatch) -> None:
    """Train zoo model `name` (seed 0) in `zoo_dir`, killed (KeyboardInterrupt) as its third SGD step starts."""
    real_step, calls = torch.optim.SGD.step, []

    def killed_at_3(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", killed_at_3)
    with pytest.raises(KeyboardInterrupt):
        zoo.train_model(name, 0, zoo_dir=zoo_dir, progress=False)
    monkeypatch.setattr(torch.optim.SGD, "step", real_step)


def test_training_stopped_at_any_step_resumes_to_the_same_weights(tiny_zoo, tmp_path, monkeypatch):
    """A model's training killed part-way leaves its checkpoint in zoo/partial/, `zoo list` shows the step, and the
    next `zoo train` continues from it to the very weights of an uninterrupted run; the checkpoint then goes."""
    import dataclasses

    from dlcore.cli.zoo import _state

    longer = dataclasses.replace(zoo.TINY, steps=4, checkpoint_every=1)
    monkeypatch.setitem(zoo.SCHEDULES, "tiny", longer)
    entry, name = "deeplab-v1-largefov-s0", "deeplab-v1-largefov"
    whole = _copy(tiny_zoo, tmp_path / "whole")
    zoo.train_model(name, 0, zoo_dir=whole, progress=False)
    stopped = _copy(tiny_zoo, tmp_path / "stopped")
    (stopped / f"{entry}.pt").unlink()  # missing: `zoo list` reads its state from the checkpoint
    _killed_before_step_3(name, stopped, monkeypatch)
    assert _state(entry, stopped).startswith("partial (2/4 steps); held-out mean IoU ")
    assert _state(entry, stopped).endswith(" at step 2") and zoo.partial_step(entry, stopped) == (2, 4)
    zoo.train_model(name, 0, zoo_dir=stopped, progress=False)
    assert not (stopped / "partial" / entry).exists()
    a, b = zoo.load_entry(entry, whole), zoo.load_entry(entry, stopped)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    curves = [zoo.read_manifest(d)["entries"][entry]["curve"] for d in (whole, stopped)]
    assert curves[0] == curves[1] and [p[0] for p in curves[0]] == [1, 2, 3, 4]


def test_only_trains_what_is_missing_and_again_retrains(tiny_zoo, tmp_path, monkeypatch):
    """`zoo train --only X` trains X's missing seeds and leaves complete ones alone (a queue of entries can be run
    again after a stop); `--again` retrains them; `--again` without `--only` is refused."""
    from dlcore.cli import main
    from dlcore.zoo import training

    trained, real = [], training.train_model
    monkeypatch.setattr(training, "train_model", lambda name, seed, **k: trained.append(seed) or real(name, seed, **k))
    d = _copy(tiny_zoo, tmp_path / "z")
    (d / "deeplab-v1-largefov-s1.pt").unlink()
    assert main(["zoo", "train", "--only", "deeplab-v1-largefov", "--zoo-dir", str(d)]) == 0
    assert trained == [1] and zoo.store._complete("deeplab-v1-largefov-s1", d)
    assert main(["zoo", "train", "--only", "deeplab-v1-largefov", "--zoo-dir", str(d)]) == 0 and trained == [1]
    assert main(["zoo", "train", "--only", "deeplab-v1-largefov-s0", "--again", "--zoo-dir", str(d)]) == 0
    assert trained == [1, 0] and zoo.store._complete("deeplab-v1-largefov-s0", d)
    assert main(["zoo", "train", "--again", "--zoo-dir", str(d)]) == 2


def test_the_pretraining_is_stored_int8_only_where_its_label_accuracy_stays(monkeypatch):
    from dlcore.pretrain import CLASSIFIERS
    from dlcore.zoo.training import _faithful_pretrained

    model = CLASSIFIERS["vgg16"](zoo.WIDTH, 11)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    for measured, storage in ((0.9, "int8 kernels + fp16"), (0.902, "fp16")):  # 0.2 points: not faithful
        monkeypatch.setattr("dlcore.pretrain.label_accuracy", lambda m, d, value=measured: value)
        stored, info = _faithful_pretrained(model, 0.9, 512)
        assert info["storage"] == storage
        assert any(k.endswith("#q") for k in stored) == (storage != "fp16")
        assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())  # left as trained
        assert zoo.unpack(stored).keys() == trained.keys()
        if storage == "fp16":  # the fp16 file holds the trained weights, not the int8 copy measured before it
            exact = zoo.unpack(zoo.pack(trained))
            assert all(torch.equal(v, exact[k]) for k, v in zoo.unpack(stored).items())


def test_the_tiny_schedule_scores_its_pretraining_on_a_few_scenes(tmp_path, monkeypatch):
    """Smoke runs train a tiny zoo per notebook: scoring each classifier on 512 scenes (twice: the accuracy and the
    storage check) was most of their time. Each schedule says how many (`pretrain_check`)."""
    seen = []

    def accuracy(model, data, batch_size=32):
        seen.append(len(data))
        return 0.5

    monkeypatch.setattr("dlcore.pretrain.label_accuracy", accuracy)
    zoo.claim_schedule(tmp_path, zoo.TINY)
    info = zoo.train_pretrained("vgg16", zoo_dir=tmp_path, progress=False)
    assert len(seen) >= 2 and set(seen) == {zoo.TINY.pretrain_check}
    assert zoo.TINY.pretrain_check < zoo.SCHEDULES["converged"].pretrain_check == 512
    assert info["label_accuracy"] == 0.5


def test_a_partial_run_begun_on_an_older_pretraining_starts_again(tiny_zoo, tmp_path, monkeypatch, capsys):
    """A checkpoint in zoo/partial/ records what its run started from; when the pre-training has changed since, its
    steps were taken on another frozen stem, so `zoo train` starts the entry again instead of resuming it."""
    import dataclasses

    from dlcore.checkpoint import load_checkpoint, save_checkpoint

    monkeypatch.setitem(zoo.SCHEDULES, "tiny", dataclasses.replace(zoo.TINY, steps=4, checkpoint_every=1))
    entry, name = "deeplab-v1-largefov-s0", "deeplab-v1-largefov"
    whole = _copy(tiny_zoo, tmp_path / "whole")
    zoo.train_model(name, 0, zoo_dir=whole, progress=False)
    d = _copy(tiny_zoo, tmp_path / "z")
    _killed_before_step_3(name, d, monkeypatch)
    last = d / "partial" / entry / "last.pt"
    state = load_checkpoint(last)
    assert state["meta"]["started_from"] == {"pretrain-vgg16": zoo.read_manifest(d)["entries"]["pretrain-vgg16"]["sha256"]}
    state["meta"]["started_from"]["pretrain-vgg16"] = "0" * 64  # begun before the pre-training was redone
    state["model"] = {k: v + 0.5 if v.is_floating_point() else v for k, v in state["model"].items()}  # other weights
    save_checkpoint(last, **{k: state[k] for k in ("model", "optimizer", "step", "schedule", "rng", "meta", "loss")})
    capsys.readouterr()
    zoo.train_model(name, 0, zoo_dir=d, progress=False)
    assert "its partial run started from an older pretrain-vgg16; starting it again" in capsys.readouterr().out
    a, b = zoo.load_entry(entry, whole), zoo.load_entry(entry, d)
    assert all(torch.equal(a[k], b[k]) for k in a)  # all four steps taken again, as by an uninterrupted run
    assert [p[0] for p in zoo.read_manifest(d)["entries"][entry]["curve"]] == [1, 2, 3, 4]


def test_a_model_trained_from_an_older_pretraining_is_stale_and_retrained(tiny_zoo, tmp_path):
    """Each model records the sha256 of what it started from (the pre-trained classifier, FCN's previous stage): when
    that file changes, the model's frozen layers are not the ones it learnt on, so `load` refuses it by name, `zoo
    list` says stale, and `zoo train` retrains it."""
    from dlcore.cli.zoo import _state

    d = _copy(tiny_zoo, tmp_path / "z")
    info = zoo.read_manifest(d)["entries"]["fcn16s-s0"]
    assert set(info["started_from"]) == {"pretrain-vgg16", "fcn32s-s0"}
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["entries"]["fcn16s-s0"]["started_from"]["fcn32s-s0"] = "0" * 64  # fcn32s-s0 retrained since
    (d / "manifest.json").write_text(json.dumps(manifest))
    assert _state("fcn16s-s0", d) == "stale (trained from an older fcn32s-s0)"
    with pytest.raises(zoo.ZooError, match=r"fcn16s-s0.pt was trained from another fcn32s-s0 .*zoo train --only fcn16s-s0"):
        zoo.load("fcn16s", 0, d)
    assert zoo.train_all(["fcn16s-s0"], zoo_dir=d, progress=False, log=lambda m: None) == ["fcn16s-s0"]
    assert _state("fcn16s-s0", d).startswith("ok; held-out mean IoU ")
    # a pre-training of other steps (or another rate) than the schedule's is stale itself, and `zoo train` redoes it
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["entries"]["pretrain-vgg16"]["recipe"]["steps"] += 1
    (d / "manifest.json").write_text(json.dumps(manifest))
    assert _state("pretrain-vgg16", d) == "stale (not the schedule's pre-training)"
    with pytest.raises(zoo.ZooError, match=r"pretrain-vgg16.pt was pre-trained on another recipe than the zoo's schedule"):
        zoo.load_entry("pretrain-vgg16", d)
    manifest["entries"]["pretrain-vgg16"]["recipe"]["steps"] -= 1
    manifest["entries"]["pretrain-vgg16"]["recipe"]["lr"] *= 5
    (d / "manifest.json").write_text(json.dumps(manifest))
    assert _state("pretrain-vgg16", d) == "stale (not the schedule's pre-training)"


def test_a_second_zoo_train_on_the_same_entry_is_refused_by_name(tiny_zoo, tmp_path):
    """Two `zoo train` processes on one entry: the second stops with the entry, the first one's pid and what to do,
    before writing anything; the first one's checkpoint is untouched."""
    from dlcore.io import lock_folder

    d = _copy(tiny_zoo, tmp_path / "z")
    partial = d / "partial" / "deeplab-v1-largefov-s0"
    with lock_folder(partial, "the first run's"):  # held as the first process holds it (flock: per open file)
        with pytest.raises(zoo.ZooError, match=rf"deeplab-v1-largefov-s0 is being trained by another `zoo train` "
                                               rf"\(pid {os.getpid()}\).*zoo list --zoo-dir"):
            zoo.train_model("deeplab-v1-largefov", 0, zoo_dir=d, progress=False)
        assert sorted(p.name for p in partial.iterdir()) == [".lock"]
        # a whole `zoo train` goes on with the entries nobody else holds, then names the one it left
        (d / "deeplab-v1-largefov-s1.pt").unlink()
        with pytest.raises(zoo.ZooError, match=r"deeplab-v1-largefov-s0 is being trained by another `zoo train`; "
                                               r"the rest is done \(1 trained\)"):
            zoo.train_all(["deeplab-v1-largefov"], force=True, zoo_dir=d, progress=False, log=lambda m: None)
        assert zoo.store._complete("deeplab-v1-largefov-s1", d)
    assert zoo.store._ok("deeplab-v1-largefov-s0", d)


def test_a_zoo_never_mixes_two_schedules(tiny_zoo, tmp_path):
    """A tiny zoo is refused as a full one (its entries would count as complete), and the other way round."""
    d = _copy(tiny_zoo, tmp_path / "z")
    run = subprocess.run([sys.executable, "-m", "dlcore", "zoo", "train", "--zoo-dir", str(d), "--schedule", "full"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "'tiny' schedule" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    # Without --schedule, `zoo train` continues the zoo's own schedule (here: complete, nothing to train).
    again = subprocess.run([sys.executable, "-m", "dlcore", "zoo", "train", "--zoo-dir", str(d)],
                           capture_output=True, text=True)
    assert again.returncode == 0 and zoo.schedule_of(d).name == "tiny", again.stderr[-500:]
    with pytest.raises(zoo.ZooError, match="'full' schedule"):
        zoo.claim_schedule(zoo.ZOO_DIR, zoo.TINY)


@pytest.mark.parametrize("damage", ["no_entries", "entries_list", "folder", "outside_file", "duplicate_key"])
def test_a_damaged_manifest_is_named_with_its_fix(tiny_zoo, tmp_path, damage):
    d = _copy(tiny_zoo, tmp_path / "z")
    m = json.loads((d / "manifest.json").read_text())
    if damage == "folder":
        (d / "manifest.json").unlink()
        (d / "manifest.json").mkdir()
    elif damage == "duplicate_key":  # the last "fcn8s-s0" would win silently, the intact entry looking altered
        text = (d / "manifest.json").read_text()
        (d / "manifest.json").write_text(text.replace('"entries": {', '"entries": {"fcn8s-s0": {"file": "x"}, ', 1))
    else:
        if damage == "no_entries":
            del m["entries"]
        elif damage == "entries_list":
            m["entries"] = list(m["entries"])
        else:
            m["entries"]["fcn8s-s0"]["file"] = "../../outside.pt"
        (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(zoo.ZooError, match="manifest") as e:
        zoo.load("fcn8s", 0, d)
    assert "git checkout" in str(e.value) or "zoo train" in str(e.value)


def test_a_claim_holds_only_with_the_papers_sign_and_a_gap_above_the_seed_spread():
    from dlcore.zoo.claims import Claim, verdict_of

    above, below = Claim("a > b", "Table 3", +1.5), Claim("a < b", "Table 3", -0.8)
    a, b = [60.0, 61.0, 62.0], [57.0, 58.0, 59.0]  # gap +3, sd 1
    assert verdict_of(above, np.array(a), np.array(b))["holds"]
    assert not verdict_of(below, np.array(a), np.array(b))["holds"]  # the measured gap has the other sign
    assert verdict_of(below, np.array(b), np.array(a))["holds"]
    assert not verdict_of(above, np.array(a), np.array([59.5, 60.5, 61.5]))["holds"]  # gap 0.5 < sd 1
    one = verdict_of(above, np.array([70.0]), np.array([50.0]))
    assert not one["holds"] and one["verdict"] == "too few seeds"
    near = Claim("a within 1 of b", "Table 2", -0.3, within=1.0)
    assert verdict_of(near, np.array(a), np.array(a) + 1.5)["holds"]  # |gap| 1.5 <= 1 + sd 1
    assert not verdict_of(near, np.array(a), np.array(a) + 2.5)["holds"]
    adds = Claim("a adds at least 1.5 to b", "Table 1", +5.4, at_least=1.5)
    assert verdict_of(adds, np.array(a), np.array(b))["holds"]  # gap 3 - 1.5 > sd 1
    assert not verdict_of(adds, np.array(a), np.array(b) + 0.5)["holds"]  # gap 2.5 - 1.5 is not above sd 1


def test_a_ledger_in_full_mode_checks_both_kinds_and_saves_its_rows():
    from dlcore.zoo.claims import Claim, Ledger

    smoke = Ledger(smoke=True)
    assert smoke.measure(Claim("A > B", "Table 3", 1.0), [60], [50])["verdict"] == "too few seeds"
    smoke.check(not_reproduced={"A > B": "r"})  # never asserted
    ledger = Ledger(smoke=False)
    ledger.measure(Claim("A > B", "Table 3", 1.0), [60, 61, 62], [50, 51, 52])
    ledger.measure(Claim("B > A", "Table 3", 1.0), [50, 51, 52], [60, 61, 62])
    with pytest.raises(AssertionError, match="now reproduced"):
        ledger.check(not_reproduced={"A > B": "r", "B > A": "r"})
    with pytest.raises(AssertionError, match="does not hold"):
        ledger.check(not_reproduced={})
    with pytest.raises(AssertionError, match="never measured"):
        ledger.check(not_reproduced={"B > A": "r", "C > D": "r"})
    ledger.check(not_reproduced={"B > A": "the map is too small"})
    rows = ledger.rows()
    assert [r["verdict"] for r in rows] == ["holds", "NOT reproduced"] and rows[1]["reason"] == "the map is too small"
    two = Ledger(smoke=False)  # "holds" needs three seeds' spread
    assert two.measure(Claim("A > B", "Table 3", 1.0), [60, 61], [50, 51])["verdict"] == "too few seeds"
    # the "paper against ours" rows are saved in full mode only, atomically, as the notebook's own file
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = ledger.save(d, "06")
        assert json.loads(path.read_text()) == {"notebook": "06", "rows": rows}
        assert smoke.save(d, "07") is None and sorted(p.name for p in Path(d).iterdir()) == ["06.json"]


def test_a_notebook_refuses_a_zoo_that_lacks_a_model_naming_its_step_and_command(tiny_zoo, tmp_path):
    """A model partly trained (or not at all) is refused with its state and the command that finishes it, not
    dropped from the table."""
    d = _copy(tiny_zoo, tmp_path / "z")
    assert zoo.present({"LargeFOV": "deeplab-v1-largefov"}, d) == {"LargeFOV": "deeplab-v1-largefov"}
    (d / "deeplab-v1-largefov-s1.pt").unlink()
    partial = d / "partial" / "deeplab-v1-largefov-s1"
    partial.mkdir(parents=True)
    torch.save({"step": 1, "schedule": {"steps": 2}, "model": {}}, partial / "last.pt")
    with pytest.raises(zoo.ZooError, match=r"seed 1 at step 1/2.*zoo train --only deeplab-v1-largefov"):
        zoo.present({"LargeFOV": "deeplab-v1-largefov", "FCN-8s": "fcn8s"}, d)


def test_the_crf_search_widens_its_grid_until_the_optimum_lies_inside(tiny_zoo, monkeypatch):
    """An optimum on the grid's edge makes the search try past that edge: here a larger sigma_alpha always scores
    higher, so the tiny grid (10, 20) grows to 40, 80, 160 and stops there (CRF_EXPANSIONS), saying so."""
    def refine(images, probs, params, w1s):  # labels that carry the setting they were made with
        return [np.full(1, params["sigma_alpha"]) for _ in w1s]

    def confusions(labels, masks, c):  # mean IoU rises with sigma_alpha
        return (np.eye(c) * np.ravel(labels)[0] * 10 + 1).astype(np.int64)[None]

    monkeypatch.setattr(zoo.training, "crf_refine_w1s", refine)
    monkeypatch.setattr(zoo.training, "image_confusions", confusions)
    found = zoo.crf_search("deeplab-v1-largefov", tiny_zoo, progress=False)
    assert sorted({float(k.split("/")[1]) for k in found["grid"]}) == [10.0, 20.0, 40.0, 80.0, 160.0]
    assert found["params"]["sigma_alpha"] == 160.0 and found["interior"] is False


def test_the_crf_search_doubles_w1_past_the_edge_and_stops_when_the_optimum_is_inside(tiny_zoo, monkeypatch):
    """w1 widens by a factor 2 like the sigmas: a score that peaks at w1 = 8 grows the grid (2, 4) to 8 and 16,
    and the search stops there with the optimum inside."""
    def refine(images, probs, params, w1s):  # labels that carry the w1 they were made with
        return [np.full(1, w) for w in w1s]

    def confusions(labels, masks, c):  # mean IoU peaks at w1 = 8
        return (np.eye(c) * (100 - abs(np.ravel(labels)[0] - 8)) + 1).astype(np.int64)[None]

    grid = (("w1", (2.0, 4.0)), ("sigma_alpha", (10.0,)), ("sigma_beta", (5.0,)))
    schedule = dataclasses.replace(zoo.schedule_of(tiny_zoo), crf_grid=grid)
    monkeypatch.setattr(zoo.training, "schedule_of", lambda zoo_dir: schedule)
    monkeypatch.setattr(zoo.training, "crf_refine_w1s", refine)
    monkeypatch.setattr(zoo.training, "image_confusions", confusions)
    found = zoo.crf_search("deeplab-v1-largefov", tiny_zoo, progress=False)
    assert sorted({float(k.split("/")[0]) for k in found["grid"]}) == [2.0, 4.0, 8.0, 16.0]
    assert found["params"]["w1"] == 8.0 and found["interior"] is True


def test_the_crf_search_confirms_its_best_settings_on_more_heldout_scenes(tiny_zoo, monkeypatch):
    """With the schedule's crf_confirm, the search's best settings are scored again on the searched and further
    held-out scenes, and the best there is chosen: here the searched scenes peak at w1 = 4 and the larger set at
    w1 = 2. A confirmed choice on the grid's edge tries one doubling past it (here to w1 = 0.5, then inside)."""
    def refine(images, probs, params, w1s):  # labels that carry the w1 and how many scenes they were made on
        return [np.array([w, len(images)]) for w in w1s]

    def confusions(labels, masks, c):  # the searched scenes peak at w1 = 4; the larger set at w1 = peak
        if np.size(labels) != 2:  # the network's own labels, without the CRF
            return np.eye(c, dtype=np.int64)[None]
        w, n = np.ravel(labels)
        best = 4.0 if n == searched else peak
        return (np.eye(c) * (100 - abs(np.log2(w / best))) + 1).astype(np.int64)[None]

    grid = (("w1", (1.0, 2.0, 4.0, 8.0)), ("sigma_alpha", (10.0,)), ("sigma_beta", (5.0,)))
    schedule = dataclasses.replace(zoo.schedule_of(tiny_zoo), crf_grid=grid, crf_confirm=2)
    searched = schedule.n_heldout
    monkeypatch.setattr(zoo.training, "schedule_of", lambda zoo_dir: schedule)
    monkeypatch.setattr(zoo.training, "crf_refine_w1s", refine)
    monkeypatch.setattr(zoo.training, "image_confusions", confusions)
    peak = 2.0
    found = zoo.crf_search("deeplab-v1-largefov", tiny_zoo, progress=False)
    assert max(found["grid"], key=found["grid"].get) == "4.0/10.0/5.0"
    assert found["params"]["w1"] == 2.0 and found["interior"] is True
    assert found["confirm_scenes"] == searched + 2 and sorted(found["confirmed"]) == sorted(found["grid"])
    peak = 0.5
    found = zoo.crf_search("deeplab-v1-largefov", tiny_zoo, progress=False)
    assert found["params"]["w1"] == 0.5 and found["interior"] is True
    assert "0.25/10.0/5.0" in found["confirmed"] and "0.25/10.0/5.0" in found["grid"]  # scored on both sets


def test_zoo_train_confirms_a_recorded_crf_search_without_searching_again(tiny_zoo, tmp_path, monkeypatch):
    """A zoo whose schedule asks for the confirmation, holding a search made before it: `zoo train` confirms the
    recorded search (no new search, no training) and scores again every seed scored with the replaced setting."""
    d = _copy(tiny_zoo, tmp_path / "z")
    name = "deeplab-v1-largefov"
    schedule = dataclasses.replace(zoo.schedule_of(d), crf_confirm=2)
    for module in (zoo.training, zoo.store):
        monkeypatch.setattr(module, "schedule_of", lambda zoo_dir: schedule)
    assert not zoo.store._complete(f"{name}-s1", d)
    before = zoo.read_manifest(d)["crf"][name]
    other = {**before["params"], "w1": before["params"]["w1"] + 1}
    monkeypatch.setattr(zoo.training, "crf_search", lambda *a: pytest.fail("searched again"))
    monkeypatch.setattr(zoo.training, "train_model", lambda *a, **k: pytest.fail("trained again"))
    monkeypatch.setattr(zoo.training, "confirm_crf", lambda n, found, *a: {**found, "params": other, "confirmed": {}})
    scored = []
    monkeypatch.setattr(zoo.training, "record_scores", lambda n, seed, zoo_dir: scored.append(seed))
    zoo.train_all([name], zoo_dir=d, progress=False, log=lambda *a: None)
    assert zoo.read_manifest(d)["crf"][name]["params"] == other
    assert sorted(scored) == [0, 1] and all(zoo.store._complete(f"{name}-s{s}", d) for s in (0, 1))


def test_the_plateau_rule_reads_the_last_quarter_of_the_learning_curve(tiny_zoo):
    """A curve that climbs to the end fails the rule; one that flattens passes, whatever its noise before; `zoo list`
    says which, beside where the curve ended."""
    from dlcore.cli.zoo import _state

    steps = range(500, 24001, 500)
    rising = [[t, 40 + t / 1000] for t in steps]  # +6 points over the last 6,000 steps
    flat = [[t, min(80.0, 40 + t / 250) + (1.5 if t // 500 % 2 else -1.5)] for t in steps]  # noisy, then flat at 80
    flat[-1][1] = 80.3
    assert zoo.last_quarter_gain(rising) == pytest.approx(6.0)
    assert abs(zoo.last_quarter_gain(flat)) < zoo.PLATEAU_GAIN
    entry = "deeplab-v1-largefov-s0"
    curve = zoo.read_manifest(tiny_zoo)["entries"][entry]["curve"]  # the tiny schedule records one at every step
    gain = zoo.last_quarter_gain(curve)
    assert _state(entry, tiny_zoo) == (f"ok; held-out mean IoU {curve[-1][1]:.1f}, last quarter {gain:+.1f} "
                                       f"({'plateau' if gain < 1 else 'still rising'})")


def test_a_notebook_retrains_on_the_schedule_of_the_zoo_it_reads(tiny_zoo, tmp_path, monkeypatch):
    """RETRAIN = True trains a notebook's models on its zoo's own schedule (zoo-next's is the converged one); a retrain
    folder that holds another schedule's entries is refused before anything trains, not mixed."""
    calls = []
    monkeypatch.setattr(zoo.evidence, "train_all", lambda models, **kw: calls.append((models, kw["zoo_dir"])))
    out = zoo.for_notebook(["deeplab-v1-largefov"], smoke=False, retrain=True, zoo_dir=tiny_zoo,
                           retrain_dir=tmp_path / "r")
    assert out == tmp_path / "r" and zoo.schedule_of(out).name == "tiny"
    assert calls == [(["deeplab-v1-largefov"], out)]
    with pytest.raises(zoo.ZooError, match="holds a zoo trained on the 'tiny' schedule"):
        zoo.for_notebook(["fcn32s"], smoke=False, retrain=True, zoo_dir=zoo.ZOO_DIR, retrain_dir=tiny_zoo)
    assert len(calls) == 1


def test_a_second_zoo_train_waits_for_the_crf_search_of_the_first(tiny_zoo, tmp_path, monkeypatch):
    """Two `zoo train` processes finishing seeds of one model search the CRF once: the second waits on the first's
    lock and takes what it recorded. A search with no other search under way (seed 0 trained again) runs."""
    import fcntl
    import threading

    d = _copy(tiny_zoo, tmp_path / "z")
    name = "deeplab-v1-largefov"
    searched = []
    monkeypatch.setattr(zoo.training, "crf_search", lambda *a: searched.append(a) or {"params": {"w1": 9.0}})
    with open(d / f".crf-{name}.lock", "w") as held:  # the first process, searching
        fcntl.flock(held, fcntl.LOCK_EX)
        second = threading.Thread(target=zoo.training._cross_validate_crf, args=(name, 1, d, False))
        second.start()
        second.join(0.5)
        assert second.is_alive()  # waiting, not searching
        zoo.store._update_manifest(d, lambda m: m["crf"].__setitem__(name, {"params": {"w1": 9.0}}))
    second.join(10)
    assert not second.is_alive() and searched == []
    zoo.training._cross_validate_crf(name, 0, d, False)  # nobody else searching: it searches
    assert len(searched) == 1


def test_converged_schedule_tests_on_a_draw_no_choice_reads():
    """The converged zoo's test scenes are another draw than its held-out (selection) scenes; the shipped zoo's
    held-out scenes follow its test scenes in one draw."""
    assert zoo.SCHEDULES["converged"].test_draw != 0 and zoo.SCHEDULES["converged"].heldout_offset == 0
    assert zoo.FULL.heldout_offset == zoo.FULL.n_test
    assert len(zoo.SCHEDULES["converged"].n_test * [0]) >= 500


def test_the_converged_zoo_in_training_is_consistent():
    """zoo-next/ (the converged zoo, trained across sessions): its schedule is the converged one, every finished
    entry matches its checksum, every partial one has a readable checkpoint short of its last step, the shipped
    weights stay within 40 MB and the repository within 50 MB."""
    from dlcore.zoo.recipe import ROOT

    nxt = ROOT / "zoo-next"
    if not (nxt / "manifest.json").is_file():
        pytest.skip("no converged zoo in training in this checkout")
    schedule = zoo.schedule_of(nxt)
    assert schedule.name == "converged"
    for entry, info in zoo.read_manifest(nxt)["entries"].items():
        if zoo.partial_step(entry, nxt) is not None:  # being retrained (a changed schedule): its checkpoint is checked below
            continue
        assert zoo.store._ok(entry, nxt), f"zoo-next/{entry}.pt does not match its checksum, or is stale"
        if info["kind"] == "model":  # trained on the schedule as it stands: a changed schedule retrains its entries
            want = {"steps": schedule.steps, "lr": schedule.lr, "n_train": schedule.n_train,
                    "batch_size": schedule.batch, "bf16": schedule.bf16}
            assert {k: info["recipe"][k] for k in want} == want, f"zoo-next/{entry} was trained on another recipe"
            assert "started_from" in info, f"zoo-next/{entry} does not record what it started from"
        else:
            assert info["recipe"] == zoo.recipe.pretrain_recipe(info["arch"], schedule), \
                f"zoo-next/{entry}: another pre-training"
    for folder in (nxt / "partial").glob("*"):
        part = zoo.partial_step(folder.name, nxt)  # None: stopped before its first checkpoint
        assert part is None or 0 < part[0] < part[1], f"zoo-next/partial/{folder.name}: step {part}"
    # The issue's budget is on the shipped weights (the finished entries of both zoos); a partial run is carried
    # only until it finishes, and counts in the repository's own limit (the device tool carries at most 64 MiB).
    shipped = sum((d / info["file"]).stat().st_size for d in (zoo.ZOO_DIR, nxt)
                  for info in zoo.read_manifest(d)["entries"].values())
    assert shipped <= 40e6, f"the zoos ship {shipped / 1e6:.1f} MB of weights; retire entries the converged zoo replaces"
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode == 0:  # a checkout: what the repository carries, partial runs included
        tracked = sum(p.stat().st_size for p in (ROOT / f for f in listed.stdout.split("\0") if f) if p.is_file())
        assert tracked <= 50e6, f"the repository holds {tracked / 1e6:.1f} MB; retire zoo entries or partial runs"


def test_class_table_names_the_classes_at_zero_and_those_too_easy_to_order():
    def results(diagonals):  # one model: per seed, one image's confusion with these per-class hits of 100 pixels
        out = {}
        for s, hits in enumerate(diagonals):
            cm = np.diag(np.asarray(hits, dtype=np.int64))
            cm[:, 0] += 100 - cm.sum(1)  # the misses go to class 0
            out[s] = {"none": cm[None]}
        return out

    names = ["bg", "car", "star"]
    a = results([[100, 97, 0], [100, 99, 0]])  # star never found; car nearly always
    b = results([[100, 98, 50], [100, 96, 60]])
    iou = zoo.class_iou(a)
    assert iou.shape == (2, 3) and iou[0, 2] == 0 and 96 < iou[0, 1] < 98
    table, zero, easy = zoo.class_table({"A": a, "B": b}, names)
    assert zero == [("A", "star")] and easy == ["car"]
    assert table.splitlines()[1].startswith("A ") and len(table.splitlines()) == 3
