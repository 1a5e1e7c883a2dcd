"""Run the notebooks headless through papermill: `python -m dlcore figures` and the notebook tests.

A notebook declares the figures it writes in its metadata, `metadata.dlcore.figures = ["02_taps", ...]`,
so that the runner and the tests can check that each was written, and how long its full run takes,
`metadata.dlcore.seconds`, so that a run side by side starts the longest first.
"""

import ast
import json
import os
import re
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
    shown: int = 0  # images the executed notebook displays


def notebooks(only: str | None = None, folder: Path = NOTEBOOKS) -> list[Path]:
    """The notebooks in order; `only="02"` keeps those whose name starts with it."""
    paths = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if p.name.startswith(only)]
        if not paths:
            raise ValueError(f"no notebook in {folder} starts with {only!r}")
    return paths


def declared_seconds(path: Path) -> float:
    """How long a full run of the notebook takes (its metadata.dlcore.seconds, on two cores side by side): the
    order `run_all` starts them in when no earlier run's times are recorded (a fresh clone)."""
    return float(json.loads(Path(path).read_text())["metadata"].get("dlcore", {}).get("seconds", 0.0))


def declared_figures(path: Path) -> list[str]:
    """The figure names a notebook says it writes (its metadata.dlcore.figures)."""
    meta = json.loads(Path(path).read_text())["metadata"]
    return list(meta.get("dlcore", {}).get("figures", []))


def displayed_images(executed: Path) -> int:
    """How many images an executed notebook displays (image outputs of its code cells). A notebook shows every
    figure it saves where it makes it (dlcore.viz.show), so this is at least the number it declares."""
    cells = json.loads(Path(executed).read_text())["cells"]
    return sum(1 for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])
               if any(k.startswith("image/") for k in o.get("data", {})))


# How Python prints a warning: "file.py:LINE: SomeWarning: message" (warnings.formatwarning)
_WARNING_LINE = re.compile(r"^\S+:\d+: \w*Warning: .*$", re.MULTILINE)


def printed_warnings(executed: Path) -> list[str]:
    """The warnings an executed notebook prints to a student (stderr of its code cells), each as "cell N: line" with
    N the cell's index in the executed copy (papermill adds a parameters cell)."""
    cells = json.loads(Path(executed).read_text())["cells"]
    return [f"cell {i}: {line}" for i, c in enumerate(cells) if c["cell_type"] == "code"
            for o in c.get("outputs", []) if o.get("name") == "stderr"
            for line in _WARNING_LINE.findall("".join(o.get("text", "")))]


# Cells whose output is exact and deterministic (the paper's tables, the metric worked by hand) start with this
# line and keep their output in the stored notebook, so a reader sees the table without running anything;
# `pytest --nbval-lax` (tests/test_nbval.py) fails when a re-run prints something else.
CHECK_OUTPUT = "# NBVAL_CHECK_OUTPUT"


def is_checked(cell) -> bool:
    """True for a code cell marked `# NBVAL_CHECK_OUTPUT` on its first line."""
    source = "".join(cell["source"])
    return cell["cell_type"] == "code" and source.lstrip().startswith(CHECK_OUTPUT)


def checked_cells(path: Path) -> list[int]:
    """Indices of the cells of notebook `path` whose stored output nbval checks."""
    return [i for i, c in enumerate(json.loads(Path(path).read_text())["cells"]) if is_checked(c)]


def store_checked_outputs(executed: Path, notebook: Path) -> int:
    """Copy the outputs of the checked cells of an executed copy (cells matched by source: papermill adds a cell)
    into the stored `notebook`, with their execution counts (nbval needs them); every other cell stays clean. Edits the JSON as stored
    (key order, indentation), so the diff shows only the outputs. Returns the number of cells updated."""
    ran = {"".join(c["source"]): c for c in json.loads(Path(executed).read_text())["cells"] if is_checked(c)}
    nb = json.loads(Path(notebook).read_text())
    updated = 0
    for cell in nb["cells"]:
        if is_checked(cell):
            source = "".join(cell["source"])
            if source not in ran:
                raise ValueError(f"{executed} has no executed copy of this checked cell of {Path(notebook).name}; "
                                 f"run it again: {source[:80]!r}")
            # nbval skips a cell stored with outputs but no execution count ("unrun"), so a checked cell keeps its
            # count from the run; every other cell stays without one.
            cell["outputs"] = _coalesce(ran[source].get("outputs", []))
            cell["execution_count"] = ran[source].get("execution_count")
            updated += 1
    tmp = Path(notebook).with_suffix(".ipynb.tmp")
    tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(notebook)  # whole or not at all: the stored notebook is never left half written
    return updated


def _coalesce(outputs: list) -> list:
    """Consecutive stream outputs of one name merged into one (the kernel flushes prints in arbitrary chunks)."""
    merged = []
    for o in outputs:
        if merged and o.get("output_type") == "stream" and merged[-1].get("output_type") == "stream" \
                and merged[-1]["name"] == o["name"]:
            text = "".join(merged[-1]["text"]) + "".join(o["text"])
            merged[-1] = {**merged[-1], "text": text.splitlines(keepends=True)}
        else:
            merged.append(o)
    return merged


def parameters(nb) -> dict:
    """{name: value} of the notebook's cell tagged `parameters` (literals only, tests/test_notebooks.py checks)."""
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return {s.targets[0].id: ast.literal_eval(s.value) for s in ast.parse(cell.source).body}


def smoke_copy(path: Path, out_dir: Path, fig_dir: Path, kernel: str = "python3") -> Path:
    """`path` with smoke parameters injected (as papermill does, stored outputs kept) and its relative paths
    ("../zoo") made absolute, written to `out_dir` so that it runs from there on the project's zoo and data and
    writes its figures into `fig_dir`. The JupyterLab test and nbval run these copies."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    path = Path(path)
    nb = load_notebook_node(str(path))
    params = {"SMOKE": True, "DEVICE": "cpu", "FIG_DIR": str(Path(fig_dir).resolve())}
    for name, value in parameters(nb).items():
        if name not in params and isinstance(value, str) and value.startswith(".."):
            params[name] = str((path.parent / value).resolve())
    nb = parameterize_notebook(nb, params)
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    nb.nbformat_minor = max(nb.nbformat_minor, 5)  # the stored notebooks carry cell ids (nbformat 4.5)
    out = Path(out_dir) / path.name
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    return out


def kernel_name() -> str:
    """The project's kernel when registered (make setup does that), else the running Python's own."""
    from jupyter_client.kernelspec import KernelSpecManager

    return KERNEL if KERNEL in KernelSpecManager().find_kernel_specs() else "python3"


def _ipc_kernel_manager():
    """A kernel manager that talks to its kernel over Unix sockets in Jupyter's private runtime folder, not TCP on
    localhost: the kernel then has no reason to warn that it "is running over TCP without encryption"."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self):
            return "ipc" if os.name == "posix" else "tcp"

        @default("ip")
        def _default_ip(self):
            if self.transport != "ipc":
                return super()._ip_default()
            # the sockets' path: private to this kernel (two kernels side by side never pick the same), and short
            # (a Unix socket's path has at most 107 bytes)
            import tempfile
            import uuid

            return os.path.join(tempfile.gettempdir(), f"dlcore-kernel-{uuid.uuid4().hex[:12]}")

    return IPCKernelManager


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
                            cwd=str(path.parent), progress_bar=False, execution_timeout=timeout,
                            kernel_manager_class=_ipc_kernel_manager())
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
    return Result(path.name, seconds, written, displayed_images(out_dir / path.name))


def _cell_source(executed: Path, index: int) -> str:
    try:
        return "".join(json.loads(executed.read_text())["cells"][index]["source"])
    except Exception:  # the executed copy may be missing if the kernel died
        return "(source unavailable)"


def default_fig_dir(smoke: bool) -> Path:
    """figures/ holds the full runs' figures, committed; a smoke run's low-resolution renders go to build/."""
    return ROOT / "build" / "smoke-figures" if smoke else ROOT / "figures"


def run_all(smoke: bool = False, only: str | None = None, device: str = "auto", jobs: int = 1,
            out_dir: Path = ROOT / "build" / "notebooks", fig_dir: Path | None = None,
            folder: Path = NOTEBOOKS) -> list[Result]:
    """Every notebook, in order with jobs=1, else `jobs` side by side (the cores shared out: DLCORE_THREADS),
    the longest first by the previous run's times; stops at the first failure. Results in notebook order.
    Figures go to `fig_dir`, by default `default_fig_dir(smoke)`."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import multiprocessing

    from tqdm.auto import tqdm

    paths = notebooks(only, folder)
    fig_dir = default_fig_dir(smoke) if fig_dir is None else fig_dir
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    jobs = min(jobs, len(paths))
    times_file = Path(out_dir) / "seconds.json"
    bar = tqdm(total=len(paths), unit="notebook")
    results = {}
    if jobs == 1:
        for path in paths:
            bar.set_description(path.stem)
            results[path] = _run_checked(path, out_dir, fig_dir, smoke, device)
            bar.update()
    else:
        previous = _read_times(times_file, smoke)
        # longest first, so that the last two end together: by the last run's times, else as declared
        order = sorted(paths, key=lambda p: -previous.get(p.name, declared_seconds(p)))
        # spawn, not fork: a forked copy of a process that has run torch can deadlock in OpenMP
        threads = max(1, _cores() // jobs)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_cap_threads, initargs=(threads,)) as pool:
            futures = {pool.submit(_run_checked, p, out_dir, fig_dir, smoke, device): p for p in order}
            for future in as_completed(futures):
                if future.exception() is not None:  # stop at the first failure: the queued notebooks never start
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise future.exception()
                results[futures[future]] = future.result()
                bar.set_description(futures[future].stem)
                bar.update()
    bar.close()
    ordered = [results[p] for p in paths]
    _write_times(times_file, smoke, {r.notebook: r.seconds for r in ordered})
    return ordered


CLAIMS_PAGE = ROOT / "docs" / "paper_vs_ours.md"


def write_claims_page(claims_dir: Path = ROOT / "build" / "claims", out: Path = CLAIMS_PAGE) -> Path:
    """docs/paper_vs_ours.md from the claims the notebooks' full runs saved (`zoo.claims.page`); the README links it."""
    from dlcore.io import atomic_write_bytes
    from dlcore.zoo.claims import page

    return atomic_write_bytes(out, page(sorted(Path(claims_dir).glob("*.json"))).encode())


def _cores() -> int:
    from dlcore.crf.threads import available_cores  # the one count of the cores this process may run on

    return available_cores()


def default_jobs() -> int:
    """Two notebooks side by side where there are two cores: the notebooks' cells are short OpenMP regions that
    two threads barely speed up, so two one-thread kernels finish the set sooner than one two-thread kernel."""
    return 2 if _cores() >= 2 else 1


def _cap_threads(threads: int) -> None:
    from dlcore import THREADS_ENV

    os.environ[THREADS_ENV] = str(threads)  # the kernels papermill starts inherit it (dlcore.use_threads)


def _run_checked(path: Path, out_dir: Path, fig_dir: Path, smoke: bool, device: str) -> Result:
    result = run_notebook(path, out_dir, fig_dir, smoke=smoke, device=device)
    missing = set(declared_figures(path)) - set(result.figures)
    if missing:
        raise NotebookFailed(f"{path.name} ran but did not write the figures it declares: {sorted(missing)}")
    if result.shown < len(declared_figures(path)):
        raise NotebookFailed(f"{path.name} declares {len(declared_figures(path))} figures but displays "
                             f"{result.shown} images: show each where it is made (dlcore.viz.show)")
    return result


def _read_times(path: Path, smoke: bool) -> dict:
    try:
        return json.loads(path.read_text()).get("smoke" if smoke else "full", {})
    except (OSError, ValueError, AttributeError):
        return {}  # no previous run (a fresh clone), or an unreadable file: notebook order


def _write_times(path: Path, smoke: bool, seconds: dict) -> None:
    from dlcore.io import atomic_write_bytes

    try:
        times = json.loads(path.read_text())
    except (OSError, ValueError):
        times = {}
    times = times if isinstance(times, dict) else {}
    times["smoke" if smoke else "full"] = {**times.get("smoke" if smoke else "full", {}), **seconds}
    atomic_write_bytes(path, json.dumps(times, indent=1).encode())


def table(results: list[Result]) -> str:
    rows = [f"{'notebook':<28}{'seconds':>9}  figures"]
    rows += [f"{r.notebook:<28}{r.seconds:>9.1f}  {len(r.figures)}" for r in results]
    rows.append(f"{'total':<28}{sum(r.seconds for r in results):>9.1f}  {sum(len(r.figures) for r in results)}")
    return "\n".join(rows)
