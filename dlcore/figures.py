"""Run the notebooks headless through papermill: `python -m dlcore figures` and the notebook tests.

A notebook declares the figures it writes in its metadata, `metadata.dlcore.figures = ["02_taps", ...]`,
so that the runner and the tests can check that each was written.
"""

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from dlcore.viz import HEADLESS_ENV

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "dlcore"


class NotebookFailed(RuntimeError):
    """A notebook cell raised: names the notebook, the cell and its source."""


@dataclass
class Result:
    notebook: str
    seconds: float
    figures: list = field(default_factory=list)


def notebooks(only: str | None = None, folder: Path = NOTEBOOKS) -> list[Path]:
    """The notebooks in order; `only="02"` keeps those whose name starts with it."""
    paths = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if p.name.startswith(only)]
        if not paths:
            raise ValueError(f"no notebook in {folder} starts with {only!r}")
    return paths


def declared_figures(path: Path) -> list[str]:
    """The figure names a notebook says it writes (its metadata.dlcore.figures)."""
    meta = json.loads(Path(path).read_text())["metadata"]
    return list(meta.get("dlcore", {}).get("figures", []))


def kernel_name() -> str:
    """The project's kernel when registered (make setup does that), else the running Python's own."""
    from jupyter_client.kernelspec import KernelSpecManager

    return KERNEL if KERNEL in KernelSpecManager().find_kernel_specs() else "python3"


def run_notebook(path: Path, out_dir: Path, fig_dir: Path, smoke: bool, device: str = "auto",
                 extra: dict | None = None, timeout: int = 1800) -> Result:
    """Execute one notebook with papermill; raise NotebookFailed naming the failing cell."""
    import papermill as pm

    path, out_dir, fig_dir = Path(path), Path(out_dir), Path(fig_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"SMOKE": smoke, "DEVICE": device, "FIG_DIR": str(fig_dir), **(extra or {})}
    start = time.perf_counter()
    previous = os.environ.get(HEADLESS_ENV)
    os.environ[HEADLESS_ENV] = "1"  # inherited by the kernel: widgets are skipped (see dlcore.viz.interact)
    try:
        pm.execute_notebook(str(path), str(out_dir / path.name), parameters=params, kernel_name=kernel_name(),
                            cwd=str(path.parent), progress_bar=False, execution_timeout=timeout)
    except pm.PapermillExecutionError as e:
        source = _cell_source(out_dir / path.name, e.cell_index)
        raise NotebookFailed(f"{path.name}: cell {e.exec_count} (index {e.cell_index}) raised "
                             f"{e.ename}: {e.evalue}\n--- cell source ---\n{source}") from None
    finally:
        if previous is None:
            os.environ.pop(HEADLESS_ENV, None)
        else:
            os.environ[HEADLESS_ENV] = previous
    seconds = time.perf_counter() - start
    written = [n for n in declared_figures(path) if (fig_dir / f"{n}.png").exists()]
    return Result(path.name, seconds, written)


def _cell_source(executed: Path, index: int) -> str:
    try:
        return "".join(json.loads(executed.read_text())["cells"][index]["source"])
    except Exception:  # the executed copy may be missing if the kernel died
        return "(source unavailable)"


def run_all(smoke: bool = False, only: str | None = None, device: str = "auto",
            out_dir: Path = ROOT / "build" / "notebooks", fig_dir: Path = ROOT / "figures") -> list[Result]:
    """Every notebook in order; stops at the first failure."""
    from tqdm.auto import tqdm

    results = []
    bar = tqdm(notebooks(only), unit="notebook")
    for path in bar:
        bar.set_description(path.stem)
        results.append(run_notebook(path, out_dir, fig_dir, smoke=smoke, device=device))
        missing = set(declared_figures(path)) - set(results[-1].figures)
        if missing:
            raise NotebookFailed(f"{path.name} ran but did not write the figures it declares: {sorted(missing)}")
    return results


def table(results: list[Result]) -> str:
    rows = [f"{'notebook':<28}{'seconds':>9}  figures"]
    rows += [f"{r.notebook:<28}{r.seconds:>9.1f}  {len(r.figures)}" for r in results]
    rows.append(f"{'total':<28}{sum(r.seconds for r in results):>9.1f}  {sum(len(r.figures) for r in results)}")
    return "\n".join(rows)
