"""Worked solutions in the notebooks, and the clean student copies without them (`python -m dlcore student`).

The convention. A notebook's markdown cell with the heading "## Exercises" lists the exercises as numbered items.
After that cell, one code cell per exercise, tagged `exercise`, whose first line is `# Exercise N: short title`,
holds a worked solution; papermill runs it with the rest of the notebook, so the solution is tested. The student
copy of a notebook is the notebook with each exercise cell's source cut to its first line plus `# your solution
here`, and every output and execution count cleared; every other cell is left as it is.

    listed_exercises(nb)     the numbers of the items under "## Exercises"
    exercise_cells(nb)       (cell index, N, title) of each exercise cell
    check_exercises(nb)      ValueError unless the cells are one per listed exercise, numbered 1..n, after the list
    student_copy(nb)         the student copy (a new notebook dict)
    write_student_copies()   every notebook's copy into a folder outside notebooks/ (atomic writes)
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

from dlcore.figures import NOTEBOOKS, ROOT, notebooks

EXERCISE_TAG = "exercise"
PLACEHOLDER = "# your solution here"
STUDENT = ROOT / "build" / "student"

_HEADING = re.compile(r"^#{1,6} ")
_ITEM = re.compile(r"^(\d+)\. ")
_TITLE = re.compile(r"^# Exercise (\d+): \S")


def _source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _section(text: str, heading: str) -> list[str] | None:
    """The lines under `heading` (e.g. "## Exercises") up to the next heading, or None without that heading."""
    lines = text.splitlines()
    if heading not in lines:
        return None
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if _HEADING.match(lines[i])), len(lines))
    return lines[start:end]


def numbered_items(text: str, heading: str) -> list[int]:
    """The numbers of the top-level numbered items ("1. ...") under `heading` in markdown `text`; [] without it."""
    return [int(m.group(1)) for line in _section(text, heading) or [] if (m := _ITEM.match(line))]


def exercises_cell(nb) -> int | None:
    """The index of the markdown cell holding the "## Exercises" heading, or None."""
    return next((i for i, c in enumerate(nb["cells"])
                 if c["cell_type"] == "markdown" and _section(_source(c), "## Exercises") is not None), None)


def listed_exercises(nb) -> list[int]:
    """The numbers of the exercises listed under "## Exercises" (1, 2, 3 in a well-formed notebook)."""
    i = exercises_cell(nb)
    return [] if i is None else numbered_items(_source(nb["cells"][i]), "## Exercises")


def is_exercise(cell) -> bool:
    return cell["cell_type"] == "code" and EXERCISE_TAG in cell.get("metadata", {}).get("tags", [])


def exercise_cells(nb) -> list[tuple[int, int, str]]:
    """(cell index, exercise number, title line) of every cell tagged `exercise`, in order; the number is None
    when the first line does not read `# Exercise N: title`."""
    out = []
    for i, cell in enumerate(nb["cells"]):
        if is_exercise(cell):
            first = _source(cell).split("\n", 1)[0]
            m = _TITLE.match(first)
            out.append((i, int(m.group(1)) if m else None, first))
    return out


def check_exercises(nb, name: str = "notebook") -> None:
    """ValueError naming what is wrong unless the exercise cells match the "## Exercises" list: one cell per listed
    exercise, numbered 1..n in order, each after the list and holding more than its title line. A notebook with no
    exercise cells passes (it has no solutions yet: `write_student_copies` reports it)."""
    cells = exercise_cells(nb)
    if not cells:
        return
    where = exercises_cell(nb)
    if where is None:
        raise ValueError(f"{name} has exercise cells but no markdown cell with the heading '## Exercises'")
    listed = listed_exercises(nb)
    if listed != list(range(1, len(listed) + 1)):
        raise ValueError(f"{name}: the exercises under '## Exercises' are numbered {listed}, not 1..{len(listed)}")
    bad = [first for _, number, first in cells if number is None]
    if bad:
        raise ValueError(f"{name}: an exercise cell's first line must read '# Exercise N: title', got {bad[0]!r}")
    numbers = [number for _, number, _ in cells]
    if numbers != listed:
        raise ValueError(f"{name}: exercise cells numbered {numbers}, but '## Exercises' lists {listed}; "
                         "give each listed exercise one cell, in order")
    early = [number for i, number, _ in cells if i < where]
    if early:
        raise ValueError(f"{name}: exercise cell {early[0]} comes before the '## Exercises' list; move it after")
    empty = [number for i, number, _ in cells if not _source(nb["cells"][i]).split("\n", 1)[1:]
             or not _source(nb["cells"][i]).split("\n", 1)[1].strip()]
    if empty:
        raise ValueError(f"{name}: exercise cell {empty[0]} holds no solution, only its title line")


def student_copy(nb) -> dict:
    """The notebook with each exercise cell cut to its title line plus `# your solution here`, and every code cell's
    outputs and execution count cleared; every other cell's source and metadata as they were."""
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        if is_exercise(cell):
            cell["source"] = [_source(cell).split("\n", 1)[0] + "\n", PLACEHOLDER]
        cell["outputs"] = []
        cell["execution_count"] = None
    return nb


def check_out_dir(out: Path, folder: Path = NOTEBOOKS) -> Path:
    """ValueError unless `out` lies outside `folder` (the notebooks this command reads): no command writes where it
    reads, and a copy written there would replace a notebook's solutions."""
    real_out, real_folder = Path(os.path.realpath(out)), Path(os.path.realpath(folder))
    if real_out == real_folder or real_folder in real_out.parents:
        raise ValueError(f"--out {out} is {'the' if real_out == real_folder else 'inside the'} notebooks folder "
                         f"{folder}, which this command reads: its copies would overwrite the worked solutions; "
                         f"choose a folder outside it (the default is {STUDENT.relative_to(ROOT)})")
    from dlcore.io import check_output_dir

    return check_output_dir(out, "--out")


def write_student_copies(folder: Path = NOTEBOOKS, out: Path = STUDENT, only: str | None = None):
    """Write the student copy of each notebook in `folder` (those starting with `only`) into `out`, each file
    atomically. Every notebook is checked before any is written. Returns (written paths, names of the notebooks
    that have no exercise cells yet: copied with their outputs cleared, nothing blanked)."""
    from dlcore.io import atomic_write_bytes

    out = check_out_dir(Path(out), folder)
    paths = notebooks(only, Path(folder))
    books = {}
    for path in paths:
        nb = json.loads(path.read_text())
        check_exercises(nb, path.name)
        books[path] = nb
    written, pending = [], []
    for path, nb in books.items():
        if not exercise_cells(nb):
            pending.append(path.name)
        text = json.dumps(student_copy(nb), indent=1, ensure_ascii=False) + "\n"
        written.append(atomic_write_bytes(Path(out) / path.name, text.encode()))
    return written, pending
