"""nbval on the stored deterministic outputs: the cells marked `# NBVAL_CHECK_OUTPUT` (the field-of-view and
parameter tables, the atrous equalities, receptive fields, the metric worked by hand) keep their output in the
stored notebook; `pytest --nbval-lax` re-runs a smoke copy of each such notebook and fails when one of those
cells prints something else. Refresh them, after a deliberate change, with
`python -m dlcore figures --smoke --only NN --store-checked`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlcore.figures import checked_cells, notebooks, smoke_copy
from dlcore.viz import HEADLESS_ENV

ROOT = Path(__file__).resolve().parent.parent
CHECKED = [p for p in notebooks() if checked_cells(p)]


def test_some_cells_are_checked():
    assert CHECKED, "no notebook marks a cell '# NBVAL_CHECK_OUTPUT': nbval would check nothing"


@pytest.mark.notebook
@pytest.mark.parametrize("path", CHECKED, ids=[p.stem for p in CHECKED])
def test_stored_outputs_hold(path, tmp_path):
    copy = smoke_copy(path, tmp_path / "notebooks", tmp_path / "figures")
    run = _nbval(copy, tmp_path)
    assert run.returncode == 0, f"{path.name}: nbval failed (the checked cells' stored output changed, or a cell raised):\n" \
                                f"{run.stdout[-6000:]}\n{run.stderr[-2000:]}"
    assert "passed" in run.stdout, run.stdout[-2000:]


def _nbval(notebook: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, HEADLESS_ENV: "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
                           "-q", "--nbval-cell-timeout=600", str(notebook)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1200)


@pytest.mark.parametrize("stored, passes", [("2\n", True), ("3\n", False)])
def test_nbval_fails_when_a_checked_output_changes(tmp_path, stored, passes):
    """The check is not vacuous: a checked cell whose stored output differs from what it prints fails; an
    unmarked cell's output is not compared."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    checked = nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1 + 1)", execution_count=1,
                                        outputs=[nbformat.v4.new_output("stream", name="stdout", text=stored)])
    nb.cells = [checked, nbformat.v4.new_code_cell("print('anything')", execution_count=2,
                                                   outputs=[nbformat.v4.new_output("stream", name="stdout", text="other\n")])]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "tiny.ipynb")
    run = _nbval(tmp_path / "tiny.ipynb", tmp_path)
    assert (run.returncode == 0) == passes, run.stdout[-3000:]
