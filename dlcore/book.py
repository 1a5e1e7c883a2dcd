"""The book: a static, offline site of the executed notebooks (`make book`, `python -m dlcore book`).

It is built with Sphinx, myst-nb and sphinx-book-theme from the executed copies that `make figures` wrote to
build/notebooks/, without executing anything again: the README is the front page, a page per paper groups its
notebooks, and the answers follow. Everything the pages load is on this machine: the theme's files are copied by
Sphinx, and MathJax comes from the jupyter-server-mathjax package (a CDN is never named), so the site opens from
disk with no network, and nothing is fetched while building it.

Refused, by name: a notebook with no executed copy (run `make figures` first), an executed copy whose run failed,
and one older than its notebook (its cells differ).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from dlcore.figures import NOTEBOOKS, ROOT, notebooks

EXECUTED = ROOT / "build" / "notebooks"
BOOK = ROOT / "build" / "book"
CLAIMS = ROOT / "build" / "claims"  # the rows each notebook's full run saved (`zoo.claims.Ledger.save`)

# (page, title, paper, notebooks by number): the book's table of contents, in the papers' order.
PAPERS = [
    ("overview", "The task", None, ["00"]),
    ("fcn", "FCN", "Long, Shelhamer, Darrell, *Fully Convolutional Networks for Semantic Segmentation*, CVPR 2015.",
     ["01"]),
    ("deeplab_v1", "DeepLab v1", "Chen, Papandreou, Kokkinos, Murphy, Yuille, *Semantic Image Segmentation with Deep "
     "Convolutional Nets and Fully Connected CRFs*, ICLR 2015 (arXiv 1412.7062).", ["02", "03", "04", "05"]),
    ("deeplab_v2", "DeepLab v2", "Chen, Papandreou, Kokkinos, Murphy, Yuille, *DeepLab: Semantic Image Segmentation "
     "with Deep Convolutional Nets, Atrous Convolution, and Fully Connected CRFs*, TPAMI 2017 (arXiv 1606.00915).",
     ["06", "07", "08"]),
    ("crf_as_rnn", "CRF as RNN", "Zheng, Jayasumana, Romera-Paredes, Vineet, Su, Du, Huang, Torr, *Conditional "
     "Random Fields as Recurrent Neural Networks*, ICCV 2015.", ["09"]),
]


class BookError(ValueError):
    """A notebook the book cannot show: no executed copy, a failed run, or a stale one. Names it and the fix."""


def mathjax_dir() -> Path:
    """MathJax 2 as installed by the jupyter-server-mathjax package: the pages load it from disk, not a CDN."""
    try:
        import jupyter_server_mathjax
    except ImportError:
        raise BookError("jupyter-server-mathjax is not installed (it serves MathJax from disk): "
                        "`pip install -c constraints.txt -e .[test,book]`, or `make setup`") from None
    return Path(jupyter_server_mathjax.__file__).parent / "static"


def _sources(cells) -> list[str]:
    return ["".join(c["source"]) for c in cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]


def check_executed(notebook: Path, executed: Path) -> dict:
    """The executed copy of `notebook`, read, after checking that it is there, ran to the end and is current."""
    if not executed.exists():
        raise BookError(f"{notebook.name} has no executed copy in {_rel(executed.parent)}/: "
                        f"run `make figures` first (the book shows what it wrote, and executes nothing)")
    nb = json.loads(executed.read_text())
    failed = nb.get("metadata", {}).get("papermill", {}).get("exception") or any(
        o.get("output_type") == "error" for c in nb["cells"] for o in c.get("outputs", []))
    if failed:
        raise BookError(f"{notebook.name}: its execution failed ({_rel(executed)} holds the error); the book refuses "
                        f"it: fix the notebook and run `make figures` again")
    if _sources(nb["cells"]) != _sources(json.loads(notebook.read_text())["cells"]):
        raise BookError(f"{notebook.name} changed since {_rel(executed)} was executed: run `make figures` again")
    return nb


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# MathJax 2 as jupyter-server-mathjax ships it (the STIX-Web fonts only, as the classic notebook configures it); myst-nb
# marks a notebook's page "ignore" and its maths "math", which MathJax 2 must be told to process.
MATHJAX2_CONFIG = {
    "messageStyle": "none",
    "tex2jax": {"processClass": "tex2jax_process|mathjax_process|math|output_area",
                "ignoreClass": "tex2jax_ignore|mathjax_ignore"},
    "HTML-CSS": {"availableFonts": [], "imageFont": None, "preferredFont": None, "webFont": "STIX-Web"},
    "SVG": {"font": "STIX-Web"},
}

CONF = '''\
# Written by dlcore.book: the book's Sphinx configuration (build/book-src is regenerated on every build).
project = "dlcore"
author = "dlcore"
extensions = ["myst_nb"]
html_theme = "sphinx_book_theme"
html_title = "dlcore: FCN and DeepLab, step by step"
html_static_path = ["_static"]
html_theme_options = {{"use_download_button": True, "use_fullscreen_button": False,
                       "show_toc_level": 2, "home_page_in_toc": True}}
html_show_sourcelink = False
html_copy_source = False
html_last_updated_fmt = None
nb_execution_mode = "off"          # the executed copies of `make figures` are shown as they are
nb_ipywidgets_js = {{}}              # no widget JavaScript from a CDN: the static cell beside each widget shows it
myst_enable_extensions = ["dollarmath", "amsmath"]
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"   # from disk (jupyter-server-mathjax)
mathjax2_config = {mathjax2_config!r}
suppress_warnings = ["myst.header", "misc.highlighting_failure"]
exclude_patterns = []
'''


def _paper_page(title: str, paper: str | None, numbers: list[str], names: dict) -> str:
    lines = [f"# {title}", ""]
    if paper:
        lines += [f"The paper: {paper}", ""]
    lines += ["```{toctree}", ":maxdepth: 1", ""] + [f"notebooks/{names[n]}" for n in numbers] + ["```", ""]
    return "\n".join(lines)


def stage(folder: Path = NOTEBOOKS, executed_dir: Path = EXECUTED, src: Path = ROOT / "build" / "book-src",
          only: list[str] | None = None, claims_dir: Path = CLAIMS) -> Path:
    """Write the book's sources into `src`: conf.py, the front page, a page per paper, the executed notebooks
    (the cell papermill injected removed), the "paper against ours" page (from `claims_dir`) and the answers.
    `only` (notebook numbers) limits it, for tests."""
    paths = [p for p in notebooks(folder=folder) if only is None or p.name[:2] in only]
    if not paths:
        raise BookError(f"no notebook to put in the book (folder {folder}, only {only})")
    checked = {p.name[:2]: (p, check_executed(p, Path(executed_dir) / p.name)) for p in paths}
    if src.exists():
        shutil.rmtree(src)
    (src / "notebooks").mkdir(parents=True)
    (src / "notebooks" / "answers").mkdir()  # where the notebooks' links to their answers point
    shutil.copytree(mathjax_dir(), src / "_static" / "mathjax")
    (src / "conf.py").write_text(CONF.format(mathjax2_config=MATHJAX2_CONFIG))
    names = {n: p.stem for n, (p, _) in checked.items()}
    for number, (path, nb) in checked.items():
        for cell in nb["cells"]:
            tags = cell.get("metadata", {}).get("tags", [])
            if "injected-parameters" in tags:
                cell.setdefault("metadata", {})["tags"] = tags + ["remove-cell"]
        (src / "notebooks" / path.name).write_text(json.dumps(nb))
        answer = path.parent / "answers" / f"{number}_answers.md"
        if answer.exists():
            shutil.copy(answer, src / "notebooks" / "answers" / answer.name)
    pages = []
    for page, title, paper, numbers in PAPERS:
        numbers = [n for n in numbers if n in checked]
        if numbers:
            (src / f"{page}.md").write_text(_paper_page(title, paper, numbers, names))
            pages.append(page)
    claims = [saved for saved in sorted(Path(claims_dir).glob("*.json")) if saved.stem in checked]
    if claims:  # the claims of the notebooks in this book
        from dlcore.zoo.claims import page

        (src / "paper_vs_ours.md").write_text(page(claims))
        pages.append("paper_vs_ours")
    answers = sorted(p.stem for p in (src / "notebooks" / "answers").glob("*.md"))
    if answers:
        (src / "answers.md").write_text("\n".join(
            ["# Answers", "", "Worked solutions to each notebook's exercises, and the answers to its "
             "questionnaire. Try the exercise first.", "", "```{toctree}", ":maxdepth: 1", ""] + [f"notebooks/answers/{a}" for a in answers]
            + ["```", ""]))
        pages.append("answers")
    readme = (ROOT / "README.md").read_text()
    (src / "index.md").write_text(readme.rstrip() + "\n\n```{toctree}\n:hidden:\n:maxdepth: 2\n\n"
                                  + "\n".join(pages) + "\n```\n")
    return src


def build(out: Path = BOOK, src: Path = ROOT / "build" / "book-src", **stage_options) -> Path:
    """Stage the sources into `src` and build the HTML site into `out`; returns the path of its front page."""
    src = stage(src=Path(src), **stage_options)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    # -q: only warnings; -E: every page read again (a rebuild never mixes old and new notebooks)
    run = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-E", str(src), str(out)],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"sphinx failed (exit {run.returncode}):\n{run.stderr[-4000:]}")
    if run.stderr.strip():
        print(run.stderr.strip(), file=sys.stderr)
    return out / "index.html"
