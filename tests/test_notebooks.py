"""Every notebook runs headless in smoke mode, writes the figures it declares, and is stored clean."""

import ast
import json
from pathlib import Path

import pytest

from dlcore.figures import NotebookFailed, declared_figures, is_checked, notebooks, run_notebook

NOTEBOOKS = notebooks()
IDS = [p.stem for p in NOTEBOOKS]


def _cells(path):
    return json.loads(Path(path).read_text())["cells"]


def _parameters_cells(path):
    return [c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/NN_*.ipynb found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_clean(path):
    """Only the cells marked '# NBVAL_CHECK_OUTPUT' (exact, deterministic tables) keep output and execution counts
    (nbval compares only cells stored as run); every other cell is stored clean."""
    cells = _cells(path)
    code = [(i, c) for i, c in enumerate(cells) if c["cell_type"] == "code"]
    dirty = [i for i, c in code if not is_checked(c) and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing"
    empty = [i for i, c in code if is_checked(c) and not c.get("outputs")]
    assert not empty, (f"{path.name}: checked cells {empty} hold no stored output for nbval to compare; "
                       f"run `python -m dlcore figures --smoke --only {path.name[:2]} --store-checked`")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_parameters_cell_holds_literals_only(path):
    cells = _parameters_cells(path)
    assert len(cells) == 1, f"{path.name}: needs exactly one cell tagged 'parameters', found {len(cells)}"
    code = [c for c in _cells(path) if c["cell_type"] == "code"]
    assert code[0] == cells[0], f"{path.name}: the parameters cell must be the first code cell"
    tree = ast.parse("".join(cells[0]["source"]))
    names = set()
    for stmt in tree.body:
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name), \
            f"{path.name}: parameters cell may only assign literals to names: {ast.unparse(stmt)}"
        ast.literal_eval(stmt.value)  # raises ValueError on anything derived
        names.add(stmt.targets[0].id)
    assert {"SMOKE", "SEED", "DEVICE", "FIG_DIR"} <= names, f"{path.name}: parameters must include SMOKE, SEED, DEVICE, FIG_DIR"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_declares_figures(path):
    assert declared_figures(path), f"{path.name}: metadata.dlcore.figures lists no figure"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_runs_in_smoke_mode(path, tmp_path):
    fig_dir = tmp_path / "figures"
    try:
        result = run_notebook(path, tmp_path / "executed", fig_dir, smoke=True, device="cpu", timeout=600)
    except NotebookFailed as e:
        pytest.fail(str(e), pytrace=False)
    missing = sorted(set(declared_figures(path)) - set(result.figures))
    assert not missing, f"{path.name} did not write the figures it declares: {missing}"


def test_committed_figures_match_declarations():
    """The figures in the repository are those of the last full run: every declared one is there."""
    root = Path(__file__).resolve().parent.parent / "figures"
    missing = [f"{p.name}: {n}" for p in NOTEBOOKS for n in declared_figures(p) if not (root / f"{n}.png").exists()]
    assert not missing, f"figures/ lacks declared figures (run `make figures`): {missing}"


# The notebooks whose claims rest on the teaching zoo: in full mode they score the shipped zoo (no training) and
# assert every claim they measure, except the ones they name as not reproduced (which must still not hold).
ZOO_NOTEBOOKS = [p for p in NOTEBOOKS if p.stem[:2] in ("01", "03", "05", "06", "07")]


@pytest.mark.notebook
@pytest.mark.parametrize("path", ZOO_NOTEBOOKS, ids=[p.stem for p in ZOO_NOTEBOOKS])
def test_full_mode_asserts_the_papers_claims(path, tmp_path):
    try:
        run_notebook(path, tmp_path / "executed", tmp_path / "figures", smoke=False, device="cpu", timeout=900)
    except NotebookFailed as e:
        pytest.fail(str(e), pytrace=False)
