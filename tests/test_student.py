"""Worked solutions and student copies: every exercise of the notebooks that have them has one solution cell, the
student copy empties exactly those cells, `python -m dlcore student` never writes into notebooks/, and every
answers file works each exercise and answers each questionnaire item."""

import json
import re
from pathlib import Path

import pytest

from dlcore.cli import main
from dlcore.figures import NOTEBOOKS
from dlcore.student import (PLACEHOLDER, check_exercises, exercise_cells, is_exercise, listed_exercises,
                            numbered_items, student_copy, write_student_copies)

# The notebooks whose exercises have worked solutions in the notebook (the others are reported by the command).
SOLVED = ["00", "01", "02", "04", "05", "06", "09"]
PATHS = {p.name[:2]: p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")}
ANSWERS = NOTEBOOKS / "answers"


def _nb(number):
    return json.loads(PATHS[number].read_text())


def _source(cell):
    return "".join(cell["source"])


@pytest.mark.parametrize("number", SOLVED)
def test_one_solution_cell_per_exercise(number):
    nb = _nb(number)
    listed = listed_exercises(nb)
    assert listed == list(range(1, len(listed) + 1)) and len(listed) >= 3, f"{number}: '## Exercises' lists {listed}"
    cells = exercise_cells(nb)
    assert [n for _, n, _ in cells] == listed, f"{number}: exercise cells {[first for *_, first in cells]}, listed {listed}"
    check_exercises(nb, PATHS[number].name)
    for i, n, first in cells:
        cell = nb["cells"][i]
        assert cell["metadata"].get("slideshow") == {"slide_type": "skip"}, f"{number}: exercise {n} is on a slide"
        body = _source(cell).split("\n", 1)[1]
        assert "print(" in body, f"{number}: exercise {n}'s solution prints no result"


@pytest.mark.parametrize("number", SOLVED)
def test_student_copy_blanks_exactly_the_exercise_cells(number):
    nb = _nb(number)
    copy = student_copy(nb)
    assert len(copy["cells"]) == len(nb["cells"]) and copy["metadata"] == nb["metadata"]
    blanked = 0
    for original, cell in zip(nb["cells"], copy["cells"]):
        assert cell["metadata"] == original["metadata"] and cell["cell_type"] == original["cell_type"]
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
        if is_exercise(original):
            blanked += 1
            assert _source(cell) == _source(original).split("\n", 1)[0] + "\n" + PLACEHOLDER
            assert _source(cell) != _source(original)
        else:
            assert _source(cell) == _source(original), f"{number}: a cell other than an exercise changed"
    assert blanked == len(listed_exercises(nb))
    assert student_copy(nb) == copy and _nb(number) == nb, "the copy is made from a copy; the notebook is untouched"


def test_command_writes_the_copies_and_reports_notebooks_without_solutions(tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["student", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.ipynb")) == sorted(p.name for p in PATHS.values())
    for number, path in PATHS.items():
        nb, copy = _nb(number), json.loads((out / path.name).read_text())
        assert copy == student_copy(nb)
        assert (f"{path.name}: no exercise cells yet" in printed) == (not exercise_cells(nb)), number
    assert not any(_source(c).split("\n", 1)[1:] != [PLACEHOLDER]
                   for p in out.glob("*.ipynb") for c in json.loads(p.read_text())["cells"] if is_exercise(c))


def _tiny(folder: Path, cells) -> Path:
    import nbformat

    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook(cells=cells)
    path = folder / "00_tiny.ipynb"
    nbformat.write(nb, path)
    return path


def _exercise(source):
    import nbformat

    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["exercise"]
    return cell


def test_notebook_without_exercise_cells_is_reported_not_broken(tmp_path):
    import nbformat

    _tiny(tmp_path / "nbs", [nbformat.v4.new_markdown_cell("## Exercises\n\n1. one\n2. two"),
                             nbformat.v4.new_code_cell("x = 1")])
    written, pending = write_student_copies(folder=tmp_path / "nbs", out=tmp_path / "out")
    assert [p.name for p in written] == ["00_tiny.ipynb"] and pending == ["00_tiny.ipynb"]
    assert _source(json.loads(written[0].read_text())["cells"][1]) == "x = 1"


@pytest.mark.parametrize("cells, problem", [
    (["# Exercise 1: a\nx = 1"], "numbered [1], but '## Exercises' lists [1, 2]"),
    (["# Exercise 2: b\nx = 2", "# Exercise 1: a\nx = 1"], "numbered [2, 1]"),
    (["# Exercise 1: a\nx = 1", "Exercise 2\nx = 2"], "first line must read"),
    (["# Exercise 1: a\nx = 1", "# Exercise 2: b\n"], "holds no solution"),
])
def test_exercise_cells_that_do_not_match_the_list_are_refused(tmp_path, cells, problem):
    import nbformat

    _tiny(tmp_path / "nbs", [nbformat.v4.new_markdown_cell("## Exercises\n\n1. one\n2. two\n\n## Questionnaire\n\n1. q"),
                             *[_exercise(s) for s in cells]])
    with pytest.raises(ValueError, match=re.escape(problem)):
        write_student_copies(folder=tmp_path / "nbs", out=tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing is written when a notebook is refused"


@pytest.mark.parametrize("inside", ["", "sub", "answers"])
def test_refuses_to_write_into_the_notebooks_folder(inside, capsys):
    before = sorted(p.name for p in NOTEBOOKS.rglob("*"))
    assert main(["student", "--out", str(NOTEBOOKS / inside)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("python -m dlcore student: --out ") and "Traceback" not in err
    assert "notebooks folder" in err and "choose a folder outside it" in err, err
    assert sorted(p.name for p in NOTEBOOKS.rglob("*")) == before


def test_make_student_runs_the_command():
    makefile = (NOTEBOOKS.parent / "Makefile").read_text()
    assert re.search(r"^student: setup\n\t\$\(PY\) -m dlcore student$", makefile, re.M), "no `make student` target"


def _section(text, heading):
    """The text under a '## ' heading, up to the next '## ' heading."""
    m = re.search(rf"^{re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    return m.group(1) if m else None


@pytest.mark.parametrize("number", SOLVED)
def test_answers_work_every_exercise_and_answer_every_question(number):
    text = (ANSWERS / f"{number}_answers.md").read_text()
    nb = _nb(number)
    assert re.match(rf"# {number} · .*: worked solutions and answers\n", text), text.splitlines()[0]
    solutions = _section(text, "## Worked solutions")
    assert solutions is not None, f"{number}_answers.md has no '## Worked solutions' section"
    worked = [int(n) for n in re.findall(r"^### Exercise (\d+): ", solutions, re.M)]
    assert worked == listed_exercises(nb), f"{number}_answers.md works exercises {worked}"
    for part in re.split(r"^### Exercise \d+: ", solutions, flags=re.M)[1:]:
        for needed in ("**Method.**", "**Result.**"):
            assert needed in part, f"{number}_answers.md: an exercise lacks {needed}: {part[:60]!r}"
    asked = next(numbered_items(_source(c), "## Questionnaire") for c in nb["cells"]
                 if c["cell_type"] == "markdown" and "## Questionnaire" in _source(c))
    assert asked == list(range(1, len(asked) + 1)) and asked, f"{number}: questionnaire items {asked}"
    answered = numbered_items(text, "## Questionnaire")
    assert answered == asked, f"{number}_answers.md answers questions {answered}, the notebook asks {asked}"


@pytest.mark.parametrize("number", SOLVED)
def test_questionnaire_points_to_the_worked_solutions(number):
    cell = next(_source(c) for c in _nb(number)["cells"] if "## Questionnaire" in _source(c))
    assert "hints" not in cell and "worked solutions" in cell, cell.splitlines()[2]
