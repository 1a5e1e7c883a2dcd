"""`python -m dlcore train` / `eval`: the README's commands on tiny synthetic runs, and one-line errors (exit code 2).

Called in-process through dlcore.cli.main for speed; one subprocess for `--help`, one for torchrun.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlcore.cli import main

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
MODEL = "deeplab-v1-largefov"
TINY = ["--data", "synthetic", "--width", "0.0625", "--size", "32", "--n-train", "4", "--batch-size", "2",
        "--device", "cpu", "--no-progress"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 3-step run, as the README's train command at tiny size."""
    out = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    assert main(["train", "--model", MODEL, *TINY, "--steps", "3", "--checkpoint-every", "2",
                 "--checkpoint-dir", str(out)]) == 0
    return out


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_train_help_in_a_subprocess():
    done = subprocess.run([sys.executable, "-m", "dlcore", "train", "--help"], capture_output=True, text=True,
                          cwd=ROOT, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    for flag in ("--model", "--data", "--steps", "--checkpoint-dir", "--checkpoint-every", "--resume",
                 "--output-stride", "--crop", "--num-workers"):
        assert flag in done.stdout


def test_eval_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--checkpoint", "--crf", "--scales", "--flip", "--json", "--n-val"):
        assert flag in out


def test_train_writes_a_resumable_checkpoint(run_dir, capsys):
    from dlcore.checkpoint import load_checkpoint

    state = load_checkpoint(run_dir / "last.pt")
    assert state["step"] == 3 and state["schedule"]["steps"] == 3
    assert state["meta"]["name"] == MODEL and state["meta"]["width"] == 0.0625 and state["meta"]["num_classes"] > 2
    assert state["meta"]["data"] == {"data": "synthetic", "size": 32, "seed": 0}
    # --resume of a finished run: nothing to do, same file, exit 0
    before = (run_dir / "last.pt").read_bytes()
    assert main(["train", "--model", MODEL, *TINY, "--steps", "3", "--checkpoint-every", "2",
                 "--checkpoint-dir", str(run_dir), "--resume"]) == 0
    assert "step 3/3" in capsys.readouterr().out
    assert (run_dir / "last.pt").read_bytes() == before


def test_eval_prints_scores_and_writes_json(run_dir, tmp_path, capsys):
    from dlcore.data import SyntheticScenes

    out = tmp_path / "scores.json"
    assert main(["eval", "--model", MODEL, "--checkpoint", str(run_dir / "last.pt"), "--n-val", "2",
                 "--device", "cpu", "--no-progress", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for label in ("pixel acc", "mean acc", "mIoU", "f.w. IoU", "per-class IoU", "background"):
        assert label in printed
    scores = json.loads(out.read_text())
    assert 0 <= scores["miou"] <= 1 and scores["images"] == 2 and scores["step"] == 3
    assert list(scores["iou"]) == SyntheticScenes("val", n=1, size=32).class_names
    assert f"{100 * scores['miou']:5.1f}%" in printed


def test_eval_with_crf_scales_and_flip(run_dir, tmp_path, capsys):
    out = tmp_path / "crf.json"
    assert main(["eval", "--checkpoint", str(run_dir / "last.pt"), "--n-val", "2", "--device", "cpu",
                 "--no-progress", "--crf", "--scales", "0.5", "0.75", "1", "--flip", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "scales 0.5 0.75 1, flip on, CRF on" in printed
    scores = json.loads(out.read_text())
    assert scores["crf"] is True and scores["scales"] == [0.5, 0.75, 1.0] and 0 <= scores["miou"] <= 1


def test_errors_are_one_line_and_exit_2(run_dir, tmp_path, capsys):
    assert main(["train", "--model", "fcn4s", *TINY, "--steps", "1", "--checkpoint-dir", str(tmp_path / "a")]) == 2
    assert "unknown model" in error_line(capsys)
    assert main(["train", "--model", MODEL, "--data", "voc", "--root", str(tmp_path / "novoc"), "--steps", "1",
                 "--device", "cpu", "--checkpoint-dir", str(tmp_path / "b")]) == 2
    assert "novoc" in error_line(capsys)
    assert main(["train", "--model", MODEL, *TINY, "--steps", "3", "--checkpoint-dir", str(run_dir)]) == 2
    assert "already exists" in error_line(capsys)
    assert main(["train", "--model", MODEL, *TINY, "--steps", "5", "--checkpoint-dir", str(run_dir), "--resume"]) == 2
    assert "steps: checkpoint 3, now 5" in error_line(capsys)

    broken = tmp_path / "broken.pt"
    broken.write_bytes((run_dir / "last.pt").read_bytes()[:1000])
    assert main(["eval", "--checkpoint", str(broken), "--device", "cpu"]) == 2
    assert "broken.pt is not a readable dlcore checkpoint" in error_line(capsys)
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt"), "--device", "cpu"]) == 2
    assert "none.pt does not exist" in error_line(capsys)
    assert main(["eval", "--model", "fcn8s", "--checkpoint", str(run_dir / "last.pt"), "--device", "cpu"]) == 2
    assert f"is for model {MODEL}, not fcn8s" in error_line(capsys)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing written on error


def test_torchrun_two_cpu_processes(tmp_path):
    """README: `torchrun --nproc_per_node=2 -m dlcore train ...`; gloo on CPU, rank 0 writes the checkpoint."""
    from dlcore.checkpoint import load_checkpoint, load_model

    out = tmp_path / "ddp"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "dlcore", "train", "--model", MODEL, *TINY, "--steps", "2", "--checkpoint-dir",
                           str(out)], capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("step 2/2") == 1  # printed by rank 0 only
    assert load_checkpoint(out / "last.pt")["step"] == 2 and len(load_checkpoint(out / "last.pt")["rng"]) == 2
    assert load_model(out / "last.pt", name=MODEL).name == MODEL


def test_eval_crf_uses_the_settings_a_checkpoint_records():
    """An imported release records its CRF (e.g. DeepLab v2 ResNet-101's sigma_alpha 67); --crf applies those."""
    from dlcore.cli.common import checkpoint_crf

    recorded = {"iterations": 10, "w1": 4.0, "sigma_alpha": 67.0, "sigma_beta": 3.0, "w2": 3.0, "sigma_gamma": 1.0}
    assert checkpoint_crf(True, {"crf": recorded}) == recorded
    assert checkpoint_crf(True, {}) is True
    assert checkpoint_crf(False, {"crf": recorded}) is None


def test_figures_refuses_a_bad_jobs_count(capsys):
    assert main(["figures", "--jobs", "0", "--only", "02"]) == 2
    assert "--jobs must be at least 1" in error_line(capsys)
