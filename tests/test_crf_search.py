"""dlcore.crf.search: the papers' CRF cross-validation on held-out images, and `python -m dlcore crf-search`."""

import pytest

from dlcore.checkpoint import checkpoint_meta, save_checkpoint
from dlcore.crf.search import crf_search, format_crf_search, heldout_indices
from dlcore.inference import Predictor


def test_heldout_indices_are_spread_and_deterministic():
    assert heldout_indices(1449, 100) == heldout_indices(1449, 100)
    idx = heldout_indices(1449, 100)
    assert len(idx) == 100 and idx[0] == 0 and idx[-1] == 1448
    assert heldout_indices(3, 100) == [0, 1, 2]
    with pytest.raises(ValueError):
        heldout_indices(10, 0)


def test_crf_search_grid_and_table(voc, voc_model):
    from dlcore.data import VOCSegmentation

    ds = VOCSegmentation(voc, split="val")
    predictor = Predictor(voc_model, device="cpu", crf=False)
    result = crf_search(predictor, ds, n_heldout=2, w1=(3, 5), sigma_alpha=(30,), sigma_beta=(3, 10), iterations=2,
                        progress=False)
    assert result["images"] == 2 and len(result["rows"]) == 4
    assert result["best"]["miou"] == max(r["miou"] for r in result["rows"])
    assert {(r["w1"], r["sigma_beta"]) for r in result["rows"]} == {(3, 3), (3, 10), (5, 3), (5, 10)}
    text = format_crf_search(result)
    assert "**best**" in text and "w2 = 3, sigma_gamma = 3" in text and text.splitlines()[-1].startswith("best: w1=")


def test_crf_search_cli(tmp_path, voc, voc_model, capsys):
    from dlcore.cli import main

    ckpt = save_checkpoint(tmp_path / "m.pt", model=voc_model.state_dict(), step=0, meta=checkpoint_meta(voc_model))
    args = ["crf-search", "--model", "deeplab-v1-largefov", "--checkpoint", str(ckpt), "--data", "voc", "--root",
            str(voc), "--n-heldout", "2", "--w1", "4", "--sigma-alpha", "30", "50", "--sigma-beta", "5",
            "--iterations", "1", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| 4 | 50 | 5 |" in out and "best: w1=4" in out
    assert main([*args[:2], "fcn8s", *args[3:]]) == 2
    assert "is for model deeplab-v1-largefov, not fcn8s" in capsys.readouterr().err
    assert main(["crf-search", "--model", "deeplab-v1-largefov", "--checkpoint", str(ckpt), "--data", "voc"]) == 2
    assert "--root" in capsys.readouterr().err


def test_crf_search_needs_the_network_alone(voc, voc_model):
    from dlcore.data import VOCSegmentation

    with pytest.raises(ValueError, match="crf=False"):
        crf_search(Predictor(voc_model, device="cpu", crf=True), VOCSegmentation(voc, split="val"), n_heldout=1)
