"""Lecture slides: each notebook's cells carry RISE slide metadata (`cell.metadata.slideshow.slide_type`), chosen
for a 15-20 minute lecture: the claim, the idea, the key figure, the verdict. Every other cell is "skip".

Live, in JupyterLab: the RISE extension (jupyterlab-rise) presents the notebook, running. Static, offline:
`make slides` (`python -m dlcore slides`) exports the executed copies that `make figures` wrote to reveal.js decks in
build/slides/, code hidden, figures and tables shown; reveal.js comes from a local install (the sphinx-revealjs
package ships it) and MathJax from jupyter-server-mathjax, both copied beside the decks, so a deck opens from disk
with no network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from dlcore.book import BookError, EXECUTED, check_executed, mathjax_dir
from dlcore.figures import NOTEBOOKS, ROOT, notebooks

SLIDES = ROOT / "build" / "slides"
TEMPLATES = Path(__file__).resolve().parent / "templates"
SLIDE_TYPES = {"slide", "subslide", "fragment", "skip", "notes", "-"}


class SlidesError(BookError):
    """A notebook that cannot become a deck: no slide metadata, or no usable executed copy."""


def slide_types(path: Path) -> list[str]:
    """The slide type of each cell of the notebook at `path` ("" where a cell has none)."""
    cells = json.loads(Path(path).read_text())["cells"]
    return [c.get("metadata", {}).get("slideshow", {}).get("slide_type", "") for c in cells]


def has_slides(path: Path) -> bool:
    return "slide" in slide_types(path)


def check_slides(path: Path) -> None:
    """Refuse, by name, a notebook without slide metadata or with a cell left unmarked or mistyped."""
    types = slide_types(path)
    if "slide" not in types:
        raise SlidesError(f"{Path(path).name} has no slide metadata: give its cells a slide type (JupyterLab's "
                          f"property inspector, 'Slide Type'; cell.metadata.slideshow.slide_type) before exporting "
                          f"it as slides")
    bad = [i for i, t in enumerate(types) if t not in SLIDE_TYPES]
    if bad:
        raise SlidesError(f"{Path(path).name}: cells {bad} have no slide type or an unknown one (each cell is one of "
                          f"{sorted(SLIDE_TYPES)}; 'skip' leaves it out)")


def reveal_dir() -> Path:
    """reveal.js as installed by the sphinx-revealjs package (dist/ and plugin/): no CDN."""
    try:
        import sphinx_revealjs
    except ImportError:
        raise SlidesError("sphinx-revealjs is not installed (it ships reveal.js): "
                          "`pip install -c constraints.txt -e .[test,book]`, or `make setup`") from None
    return Path(sphinx_revealjs.__file__).parent / "_static" / "revealjs"


def export(path: Path, executed: Path, out_dir: Path) -> Path:
    """One deck: the executed copy of notebook `path`, with the slide metadata of `path`, as out_dir/NAME.slides.html."""
    from nbconvert import SlidesExporter
    import nbformat

    check_slides(path)
    nb = check_executed(path, executed)
    stored = json.loads(Path(path).read_text())["cells"]
    ran = [c for c in nb["cells"] if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    for cell, source in zip(ran, stored):  # the slide types as stored now (the run may predate a change to them)
        cell.setdefault("metadata", {})["slideshow"] = source["metadata"]["slideshow"]
    for cell in nb["cells"]:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            cell.setdefault("metadata", {})["slideshow"] = {"slide_type": "skip"}
    exporter = SlidesExporter(template_name="dlcore_reveal", extra_template_basedirs=[str(TEMPLATES)],
                              reveal_url_prefix="reveal.js", reveal_theme="white", reveal_scroll=True,
                              reveal_width="1280", reveal_height="800",
                              mathjax_url="mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full",
                              exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.reads(json.dumps(nb), as_version=4))
    out = Path(out_dir) / f"{Path(path).stem}.slides.html"
    out.write_text(body)
    return out


def export_all(only: str | None = None, folder: Path = NOTEBOOKS, executed_dir: Path = EXECUTED,
               out_dir: Path = SLIDES) -> tuple[list[Path], list[str]]:
    """Every notebook with slide metadata (or the one `only` names, which must have it) as a deck in `out_dir`, with
    reveal.js and MathJax beside them. Returns (decks, names of the notebooks without slide metadata)."""
    paths = notebooks(only, folder)
    if only:
        for path in paths:
            check_slides(path)
    missing = [p.name for p in paths if not has_slides(p)]
    paths = [p for p in paths if has_slides(p)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, source in (("reveal.js", reveal_dir()), ("mathjax", mathjax_dir())):
        if not (out_dir / name).exists():
            shutil.copytree(source, out_dir / name)
    decks = [export(p, Path(executed_dir) / p.name, out_dir) for p in paths]
    return decks, missing
