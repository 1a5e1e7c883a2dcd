"""Notebook 08's protocol on synthetic scenes in VOC's layout: the fixture writer's offset, a VOC-layout dataset with
its own classes, the labelled measured columns, and the notebook's exercise and answer conventions."""

import json
import re
from pathlib import Path

import pytest
import torch

from dlcore.data import SyntheticScenes, VOCSegmentation
from dlcore.data.voc import write_voc_fixture
from dlcore.protocol import paper_vs_measured

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "08_reproduce_voc.ipynb"
ANSWERS = ROOT / "notebooks" / "answers" / "08_answers.md"


def test_fixture_offset_writes_the_scenes_after_it(tmp_path):
    voc = write_voc_fixture(tmp_path, n_train=1, n_val=2, size=32, seed=3, offset=5)
    ds = VOCSegmentation(tmp_path, "val", class_names=SyntheticScenes.class_names)
    assert ds.ids == ["2007_val_000005", "2007_val_000006"]
    scenes = SyntheticScenes("val", n=7, size=32, seed=3)
    for i, k in enumerate((5, 6)):
        assert torch.equal(ds[i][1], scenes[k][1])  # palette PNG labels round-trip exactly, void 255 included
    assert (voc / "ImageSets" / "Segmentation" / "train.txt").read_text() == "2007_train_000005\n"


def test_offset_zero_keeps_the_old_ids(tmp_path):
    write_voc_fixture(tmp_path, n_train=1, n_val=2, size=32)
    assert VOCSegmentation(tmp_path, "val").ids == ["2007_val_000000", "2007_val_000001"]


def test_a_voc_layout_dataset_with_its_own_classes(tmp_path):
    write_voc_fixture(tmp_path, n_train=1, n_val=1, size=32)
    ds = VOCSegmentation(tmp_path, "val", class_names=SyntheticScenes.class_names)
    assert ds.num_classes == SyntheticScenes.num_classes and ds.class_names == SyntheticScenes.class_names
    assert VOCSegmentation.num_classes == 21 and VOCSegmentation(tmp_path, "val").num_classes == 21  # VOC's untouched
    with pytest.raises(ValueError, match="class_names"):
        VOCSegmentation(tmp_path, "val", class_names=["background"])


def test_measured_columns_say_what_they_were_measured_on():
    text = paper_vs_measured("deeplab_v1_table2", {"DeepLab-CRF-LargeFOV": 0.6}, measured_label="ours (synthetic)")
    assert "| method | paper mean IoU (after CRF) | ours (synthetic) mean IoU (after CRF) |" in text
    assert "measured" not in text.split("\n")[3]
    assert "| measured mean IoU (after CRF) |" in paper_vs_measured("deeplab_v1_table2")


def _cells():
    return json.loads(NOTEBOOK.read_text())["cells"]


def test_one_exercise_cell_per_exercise_after_the_exercises_heading():
    cells = _cells()
    start = next(i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and "## Exercises" in "".join(c["source"]))
    listed = re.findall(r"^(\d+)\. \*\*", "".join(cells[start]["source"]).split("## Exercises")[1], re.MULTILINE)
    exercises = [c for c in cells if "exercise" in c["metadata"].get("tags", [])]
    assert [int(n) for n in listed] == list(range(1, len(exercises) + 1)) and len(exercises) == 3
    for n, c in enumerate(exercises, start=1):
        assert cells.index(c) > start and c["cell_type"] == "code"
        assert c["metadata"]["slideshow"] == {"slide_type": "skip"}
        assert "".join(c["source"]).startswith(f"# Exercise {n}: ")
        assert "assert " in "".join(c["source"])


def test_the_zoo_model_is_named_once():
    """One variable in the first cell names the zoo's LargeFOV, so that moving to another zoo entry is one edit."""
    code = [c for c in _cells() if c["cell_type"] == "code"]
    assert re.search(r'^ZOO_MODEL = "deeplab-v1-largefov[-a-z]*"$', "".join(code[0]["source"]), re.MULTILINE)
    rest = "\n".join("".join(c["source"]) for c in code[1:])
    assert '"deeplab-v1-largefov' not in rest and "zoo.load(ZOO_MODEL" in rest


def test_answers_hold_a_solution_per_exercise_and_an_answer_per_question():
    text = ANSWERS.read_text()
    questions = re.findall(r"^(\d+)\. ", "".join(_cells()[-1]["source"]), re.MULTILINE)
    exercises, answers = text.split("## Questionnaire")
    assert len(re.findall(r"^\d+\. \*\*", exercises, re.MULTILINE)) == 3 and exercises.count("```python") == 3
    assert re.findall(r"^(\d+)\. ", answers, re.MULTILINE) == questions
    assert "worked solutions" in "".join(_cells()[-1]["source"])
