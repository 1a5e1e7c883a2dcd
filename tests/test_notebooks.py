"""Every notebook runs headless in smoke mode, writes the figures it declares, and is stored clean."""

import ast
import json
import re
from pathlib import Path

import pytest

from dlcore.figures import (NotebookFailed, declared_figures, declared_seconds, is_checked, notebooks, printed_warnings,
                            run_notebook)

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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_declares_its_full_run_time_within_three_minutes(path):
    """The order a fresh clone's `make figures` starts them in; the issue's budget is 3 minutes a notebook."""
    assert 0 < declared_seconds(path) <= 180, f"{path.name}: metadata.dlcore.seconds is {declared_seconds(path)}"


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
    assert result.shown >= len(declared_figures(path)), \
        f"{path.name} declares {len(declared_figures(path))} figures but its executed copy displays {result.shown} images"
    warned = printed_warnings(tmp_path / "executed" / path.name)
    assert not warned, f"{path.name} prints warnings to the student: {warned[:3]}"


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
    warned = printed_warnings(tmp_path / "executed" / path.name)
    assert not warned, f"{path.name} prints warnings to the student: {warned[:3]}"


def _tiny_notebook(path: Path, source: str) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("SMOKE = False\nDEVICE = 'auto'\nFIG_DIR = '.'"),
                                         nbformat.v4.new_code_cell(source)])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(nb, path)


def test_run_all_side_by_side_shares_the_cores(tmp_path):
    """--jobs 2 runs the notebooks in two processes whose kernels get the cores shared out (DLCORE_THREADS), returns
    them in notebook order, and records their times for the next run's longest-first order."""
    from dlcore.figures import _cores, run_all

    folder = tmp_path / "nbs"
    folder.mkdir()
    for name in ("00_a", "01_b", "02_c"):
        _tiny_notebook(folder / f"{name}.ipynb", "import os, pathlib, dlcore\n"
                       f"n = dlcore.use_threads(2)\npathlib.Path(r'{tmp_path}', '{name}.txt').write_text(f'{{n}} {{os.getpid()}}')")
    results = run_all(smoke=True, jobs=2, out_dir=tmp_path / "out", fig_dir=tmp_path / "fig", folder=folder)
    assert [r.notebook for r in results] == ["00_a.ipynb", "01_b.ipynb", "02_c.ipynb"]
    threads = {int((tmp_path / f"{n}.txt").read_text().split()[0]) for n in ("00_a", "01_b", "02_c")}
    assert threads == {min(2, max(1, _cores() // 2))}
    times = json.loads((tmp_path / "out" / "seconds.json").read_text())["smoke"]
    assert set(times) == {"00_a.ipynb", "01_b.ipynb", "02_c.ipynb"}


def test_run_all_side_by_side_reports_the_failing_notebook(tmp_path):
    from dlcore.figures import run_all

    folder = tmp_path / "nbs"
    folder.mkdir()
    _tiny_notebook(folder / "00_ok.ipynb", "x = 1")
    _tiny_notebook(folder / "01_bad.ipynb", "raise ValueError('this cell fails')")
    with pytest.raises(NotebookFailed, match=r"01_bad\.ipynb: cell .* ValueError: this cell fails"):
        run_all(smoke=True, jobs=2, out_dir=tmp_path / "out", fig_dir=tmp_path / "fig", folder=folder)


def test_a_figure_saved_but_not_shown_fails_the_run(tmp_path):
    """A notebook that saves its declared figure without displaying it (what 04 once did) is refused by name."""
    from dlcore.figures import _run_checked, displayed_images

    folder = tmp_path / "nbs"
    folder.mkdir()
    make = ("import matplotlib.pyplot as plt\nfrom dlcore import viz\n"
            "fig, ax = plt.subplots()\nax.plot([0, 1])\n")
    for name, call in (("00_hidden", "viz.savefig(fig, '00_x', FIG_DIR)\nplt.close(fig)"), ("01_shown", "viz.show(fig, '01_x', FIG_DIR)")):
        _tiny_notebook(folder / f"{name}.ipynb", make + call)
        nb = json.loads((folder / f"{name}.ipynb").read_text())
        nb["metadata"]["dlcore"] = {"figures": [name[:2] + "_x"]}
        (folder / f"{name}.ipynb").write_text(json.dumps(nb))
    with pytest.raises(NotebookFailed, match=r"00_hidden\.ipynb declares 1 figures but displays 0 images"):
        _run_checked(folder / "00_hidden.ipynb", tmp_path / "out", tmp_path / "fig", True, "cpu")
    assert _run_checked(folder / "01_shown.ipynb", tmp_path / "out", tmp_path / "fig", True, "cpu").shown == 1
    assert displayed_images(tmp_path / "out" / "01_shown.ipynb") == 1


def test_a_warning_printed_in_a_cell_is_found_by_cell(tmp_path):
    """The smoke and full runs fail on a warning a student would see (a torch UserWarning once reached 09's)."""
    _tiny_notebook(tmp_path / "00_warns.ipynb", "import warnings\nprint('ran')\nwarnings.warn('careful')")
    _tiny_notebook(tmp_path / "01_quiet.ipynb", "import sys\nprint('progress: 50%', file=sys.stderr)")
    for name in ("00_warns", "01_quiet"):
        run_notebook(tmp_path / f"{name}.ipynb", tmp_path / "out", tmp_path / "fig", smoke=True, device="cpu")
    found = printed_warnings(tmp_path / "out" / "00_warns.ipynb")
    assert len(found) == 1 and found[0].endswith("UserWarning: careful"), found  # "cell N" of the executed copy
    assert printed_warnings(tmp_path / "out" / "01_quiet.ipynb") == []


def test_use_threads_refuses_a_bad_cap(monkeypatch):
    import dlcore

    monkeypatch.setenv("DLCORE_THREADS", "two")
    with pytest.raises(ValueError, match="DLCORE_THREADS must be a whole number"):
        dlcore.use_threads(2)


def test_a_run_prints_no_kernel_transport_warning(tmp_path, capfd):
    """The kernel talks to papermill over Unix sockets, so it does not warn about TCP without encryption."""
    _tiny_notebook(tmp_path / "00_quiet.ipynb", "print('ran')")
    run_notebook(tmp_path / "00_quiet.ipynb", tmp_path / "out", tmp_path / "fig", smoke=True, device="cpu")
    out, err = capfd.readouterr()
    assert "without encryption" not in out + err
    assert "ran" in (tmp_path / "out" / "00_quiet.ipynb").read_text()


# Notebooks 03 and 07 are being rewritten on the converged zoo; their openings and notes follow with it.
PENDING = {"03", "07"}
DEV_NOTE = re.compile(r"\bissues? ?#?\d+|\bwhen time ran (out|short)\b", re.IGNORECASE)


def _pending(path):
    if path.suffix == ".ipynb" and path.name[:2] in PENDING:
        pytest.skip(f"{path.name}: rewritten with the converged zoo (its opening and notes come with it)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_opens_with_objectives_reading_and_running_time(path):
    """A student sees, before the first code cell, what the notebook teaches, what to read beside it, and how long
    it runs (full and smoke)."""
    _pending(path)
    cells = _cells(path)
    first_code = next(i for i, c in enumerate(cells) if c["cell_type"] == "code")
    opening = "".join("".join(c["source"]) for c in cells[:first_code])
    for needed in ("**Read alongside:**", "**Learning objectives.**", "**Running time:**", "SMOKE = True"):
        assert needed in opening, f"{path.name}: the cells before the first code cell lack {needed!r}"


@pytest.mark.parametrize("path", NOTEBOOKS + sorted((NOTEBOOKS[0].parent / "answers").glob("*.md")),
                         ids=IDS + [p.stem for p in sorted((NOTEBOOKS[0].parent / "answers").glob("*.md"))])
def test_student_text_holds_no_development_note(path):
    """Notebooks and answers speak of the papers and the code, never of issues or of how the work went."""
    _pending(path)
    text = path.read_text() if path.suffix == ".md" else "\n".join("".join(c["source"]) for c in _cells(path))
    notes = sorted({m.group(0) for m in DEV_NOTE.finditer(text)})
    assert not notes, f"{path.name}: development notes in student-facing text: {notes}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_checks_its_parameters_before_using_them(path):
    """The setup cell calls dlcore.check_parameters(globals()), so a bad first-cell value is named, not met deep
    inside torch."""
    code = [c for c in _cells(path) if c["cell_type"] == "code"]
    setup = "".join(code[1]["source"])
    assert "dlcore.check_parameters(globals())" in setup, f"{path.name}: its setup cell does not check its parameters"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_claims_go_through_the_shared_ledger(path):
    """A notebook that measures the papers' claims does it with `zoo.claims.Ledger` (no copied claim block), asserts
    them with `ledger.check`, and saves them for the "paper against ours" page."""
    code = "\n".join("".join(c["source"]) for c in _cells(path) if c["cell_type"] == "code")
    if "ledger.measure(" not in code:
        assert "def claim(" not in code and "CLAIMS = " not in code, f"{path.name}: a claim block of its own"
        return
    assert "ledger.check(not_reproduced=" in code, f"{path.name}: measures claims but never asserts them"
    assert f'ledger.save(CLAIMS_DIR, "{path.name[:2]}")' in code, f"{path.name}: its claims miss the comparison page"
    assert 'CLAIMS_DIR = "../build/claims"' in "".join(_parameters_cells(path)[0]["source"])
