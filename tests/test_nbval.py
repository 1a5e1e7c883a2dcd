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

from dlcore.figures import NOTEBOOKS, checked_cells, smoke_copy
from dlcore.viz import HEADLESS_ENV

ROOT = Path(__file__).resolve().parent.parent
CHECKED = [p for p in NOTEBOOKS if checked_cells(p)]


def test_some_cells_are_checked():
    assert CHECKED, "no notebook marks a cell '# NBVAL_CHECK_OUTPUT': nbval would check nothing"


@pytest.mark.notebook
@pytest.mark.parametrize("path", CHECKED, ids=[p.stem for p in CHECKED])
def test_stored_outputs_hold(path, tmp_path):
    copy = smoke_copy(path, tmp_path / "notebooks", tmp_path / "figures")
    env = {**os.environ, HEADLESS_ENV: "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
                          "-q", "--nbval-cell-timeout=600", str(copy)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, f"{path.name}: nbval failed (the checked cells' stored output changed, or a cell raised):\n" \
                                f"{run.stdout[-6000:]}\n{run.stderr[-2000:]}"
    assert "passed" in run.stdout, run.stdout[-2000:]
