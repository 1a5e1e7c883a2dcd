"""The VOC protocol helpers, the papers' tables, per-class tables and the CRF search (on fixtures)."""

import math

import numpy as np
import pytest
import torch

from dlcore.checkpoint import checkpoint_meta, save_checkpoint
from dlcore.models import build_model
from dlcore.protocol import (NOT_RUN, TABLES, VOC_CLASSES, crf_search, evaluate_voc, format_crf_search,
                             heldout_indices, measured_rows, paper_vs_measured, per_class_table, write_voc_fixture)

W = 0.0625


def test_published_numbers():
    t = TABLES
    assert [v for _, (v,) in t["deeplab_v1_table2"].rows] == [67.64, 63.74, 67.14, 67.64]
    assert t["deeplab_v1_test"].value("DeepLab-MSc-CRF-LargeFOV") == 71.6
    assert t["deeplab_v2_table3"].value("ASPP-L", "miou") == 68.96 and t["deeplab_v2_table3"].value("ASPP-L") == 71.57
    assert t["deeplab_v2_table4"].value("ResNet-101") == 68.72
    assert t["deeplab_v2_table4"].value("+ MSC + COCO + Aug + ASPP + CRF") == 77.69
    assert t["deeplab_v2_test"].value("DeepLab") == 79.7
    assert t["fcn_table2"].value("FCN-8s", "fwiou") == 83.2 and t["fcn_table2"].value("FCN-32s", "pixel_acc") == 89.1
    for table in t.values():
        assert table.source and all(len(v) == len(table.columns) for _, v in table.rows)
        assert set(table.recipes) <= set(table.row_names)
    with pytest.raises(ValueError, match="no row"):
        t["fcn_table2"].value("FCN-4s")


def test_paper_vs_measured_shows_not_run_until_measured():
    text = paper_vs_measured("deeplab_v2_table3")
    assert text.count(NOT_RUN) == 6 and "| ASPP-L | 68.96 | 71.57 | not run | not run |" in text
    text = paper_vs_measured("deeplab_v2_table3", {"ASPP-L": {"miou": 0.5, "miou_crf": 0.55}, "LargeFOV": 0.6})
    assert "| ASPP-L | 68.96 | 71.57 | 50.00 | 55.00 |" in text
    assert "| LargeFOV | 65.76 | 69.84 | not run | 60.00 |" in text  # a float is the last (headline) column
    fcn = paper_vs_measured(TABLES["fcn_table2"], {"FCN-8s": {"pixel_acc": 0.9, "mean_acc": 0.8, "miou": 0.7,
                                                              "fwiou": 0.85, "iou": np.zeros(21)}})
    assert "| FCN-8s | 90.30 | 75.90 | 62.70 | 83.20 | 90.00 | 80.00 | 70.00 | 85.00 |" in fcn
    with pytest.raises(ValueError, match="not rows"):
        paper_vs_measured("fcn_table2", {"FCN-2s": 0.5})
    with pytest.raises(ValueError, match="fractions"):
        paper_vs_measured("fcn_table2", {"FCN-8s": 62.7})


def test_measured_rows_fill_the_rows_a_model_reproduces():
    s, c = {"pixel_acc": 0.9, "mean_acc": 0.8, "miou": 0.6, "fwiou": 0.85}, {"miou": 0.65}
    rows = measured_rows("deeplab-v1-largefov", s, c)
    assert rows["deeplab_v1_table2"] == {"DeepLab-CRF-LargeFOV": {"miou_crf": 0.65}}
    assert rows["deeplab_v1_table1"]["DeepLab-LargeFOV"]["miou"] == 0.6
    assert rows["deeplab_v1_table1"]["DeepLab-CRF-LargeFOV"] == {"miou_crf": 0.65}
    assert "deeplab_v1_test" not in rows  # test-server numbers are never filled from val
    assert measured_rows("deeplab-v2-vgg-aspp-l", s, c)["deeplab_v2_table3"]["ASPP-L"] == {**s, "miou_crf": 0.65}
    assert list(measured_rows("deeplab-v2-resnet101-aspp-l-msc", s, c)["deeplab_v2_table4"]) == [
        "+ MSC + COCO + Aug + ASPP", "+ MSC + COCO + Aug + ASPP + CRF"]
    assert measured_rows("fcn8s", s)["fcn_table2"] == {"FCN-8s": s}
    table = paper_vs_measured("deeplab_v1_table2", measured_rows("deeplab-v1-largefov", s, c)["deeplab_v1_table2"])
    assert "| DeepLab-CRF-LargeFOV | 67.64 | 65.00 |" in table and table.count(NOT_RUN) == 3


def test_per_class_table_in_the_papers_form():
    iou = np.linspace(0.5, 0.9, 21)
    iou[3] = np.nan  # a class absent from prediction and ground truth: shown '-', not counted
    text = per_class_table({"ours": iou, "scores dict": {"iou": iou}})
    head, rule, row, _ = text.splitlines()
    assert head.split(" | ")[1:3] == ["bkg", "aero"] and head.endswith("| tv | mIoU |")
    cells = row.strip("| ").split(" | ")
    assert cells[0] == "ours" and cells[1] == "50.0" and cells[4] == "-" and len(cells) == 23
    assert math.isclose(float(cells[-1]), round(100 * np.nanmean(iou), 1))
    with pytest.raises(ValueError, match="21 classes"):
        per_class_table({"short": np.zeros(5)})
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[-1] == "tvmonitor"


def test_heldout_indices_are_spread_and_deterministic():
    assert heldout_indices(1449, 100) == heldout_indices(1449, 100)
    idx = heldout_indices(1449, 100)
    assert len(idx) == 100 and idx[0] == 0 and idx[-1] == 1448
    assert heldout_indices(3, 100) == [0, 1, 2]
    with pytest.raises(ValueError):
        heldout_indices(10, 0)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    write_voc_fixture(root, n_train=1, n_val=3, size=40)
    return root


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("deeplab-v1-largefov", width=W).eval()


def test_evaluate_voc_on_a_fixture_ignores_void(voc, model):
    from dlcore.data import VOCSegmentation

    ds = VOCSegmentation(voc, split="val")
    assert len(ds) == 3 and (ds[0][1] == 255).any()
    plain = evaluate_voc(model, voc, progress=False)
    crf = evaluate_voc(model, voc, crf=True, progress=False)
    assert 0 <= plain["miou"] <= 1 and 0 <= crf["miou"] <= 1 and plain["iou"].shape == (21,)
    assert plain["confusion"].sum() == sum(int((ds[i][1] != 255).sum()) for i in range(3))


def test_crf_search_grid_and_table(voc, model):
    from dlcore.data import VOCSegmentation

    ds = VOCSegmentation(voc, split="val")
    result = crf_search(model, ds, n_heldout=2, w1=(3, 5), sigma_alpha=(30,), sigma_beta=(3, 10), iterations=2,
                        progress=False)
    assert result["images"] == 2 and len(result["rows"]) == 4
    assert result["best"]["miou"] == max(r["miou"] for r in result["rows"])
    assert {(r["w1"], r["sigma_beta"]) for r in result["rows"]} == {(3, 3), (3, 10), (5, 3), (5, 10)}
    text = format_crf_search(result)
    assert "**best**" in text and "w2 = 3, sigma_gamma = 3" in text and text.splitlines()[-1].startswith("best: w1=")


def test_crf_search_cli(tmp_path, voc, model, capsys):
    from dlcore.__main__ import main

    ckpt = save_checkpoint(tmp_path / "m.pt", model=model.state_dict(), step=0, meta=checkpoint_meta(model))
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
