"""The papers' tables, per-class tables, and the VOC protocol on a fixture (the `voc` and `voc_model` fixtures:
tests/conftest.py)."""

import math

import numpy as np
import pytest

from dlcore.inference import evaluate_voc
from dlcore.protocol import NOT_RUN, TABLES, VOC_CLASSES, measured_rows, paper_vs_measured, per_class_table


def test_published_numbers():
    t = TABLES
    assert [v for _, (v,) in t["deeplab_v1_table2"].rows] == [67.64, 63.74, 67.14, 67.64]
    assert t["deeplab_v1_test"].value("DeepLab-MSc-CRF-LargeFOV") == 71.6
    assert t["deeplab_v2_table3"].value("ASPP-L", "miou") == 68.96 and t["deeplab_v2_table3"].value("ASPP-L") == 71.57
    assert t["deeplab_v2_table4"].value("ResNet-101") == 68.72
    assert t["deeplab_v2_table4"].value("+ MSC + COCO + Aug + ASPP + CRF") == 77.69
    assert t["deeplab_v2_test"].value("DeepLab-CRF (ResNet-101)") == 79.7
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


def test_evaluate_voc_on_a_fixture_ignores_void(voc, voc_model):
    from dlcore.data import VOCSegmentation

    ds = VOCSegmentation(voc, split="val")
    assert len(ds) == 3 and (ds[0][1] == 255).any()
    plain = evaluate_voc(voc_model, voc, progress=False)
    crf = evaluate_voc(voc_model, voc, crf=True, progress=False)
    assert 0 <= plain["miou"] <= 1 and 0 <= crf["miou"] <= 1 and plain["iou"].shape == (21,)
    assert plain["confusion"].sum() == sum(int((ds[i][1] != 255).sum()) for i in range(3))
