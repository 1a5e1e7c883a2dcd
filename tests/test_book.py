"""`make book` and `make slides`: the static site and the reveal.js decks of the executed notebooks, offline.

The refusals run without a browser. The browser tests build the book and a deck from two smoke-executed notebooks
and open them from disk in headless Chromium with the network switched off: the site test follows every link of
the table of contents and fails on a missing image, a link to a file the site lacks, a page without its content, or
any request leaving the machine; the deck test checks that the deck renders its slides and advances.
"""

import json
import re
import shutil
from pathlib import Path

import pytest

from browser import broken_images, broken_local_links, file_of, offline_chrome, requests_leaving, skip_reason
from dlcore import book
from dlcore.figures import notebooks, run_notebook

NETWORK_ASSET = re.compile(r'<(script|link|img)\b[^>]*\b(src|href)="(https?:)?//')  # a script, style or image from afar
BOOK_NOTEBOOKS = ["02", "04"]  # quick in smoke mode (about 50 s together); 04 has maths and six figures


def _copy(tmp_path, number):
    """A notebook folder holding only notebook `number` (and its answers)."""
    folder = tmp_path / "nbs"
    (folder / "answers").mkdir(parents=True, exist_ok=True)
    path = notebooks(number)[0]
    shutil.copy(path, folder / path.name)
    return folder, folder / path.name


def test_no_executed_copy_names_make_figures(tmp_path):
    folder, _ = _copy(tmp_path, "02")
    with pytest.raises(book.BookError, match=r"02_hole_algorithm\.ipynb has no executed copy .*run `make figures` first"):
        book.stage(folder=folder, executed_dir=tmp_path / "executed", src=tmp_path / "src")


def _fake_executed(path: Path, executed: Path, error: bool = False, edit: bool = False) -> None:
    nb = json.loads(path.read_text())
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["outputs"] = [{"output_type": "error", "ename": "ValueError", "evalue": "x", "traceback": []}] if error else []
    if edit:
        nb["cells"][-1]["source"] = ["a cell edited after the run"]
    executed.mkdir(exist_ok=True)
    (executed / path.name).write_text(json.dumps(nb))


def test_a_failed_execution_is_refused_by_name(tmp_path):
    folder, path = _copy(tmp_path, "02")
    _fake_executed(path, tmp_path / "executed", error=True)
    with pytest.raises(book.BookError, match=r"02_hole_algorithm\.ipynb: its execution failed"):
        book.stage(folder=folder, executed_dir=tmp_path / "executed", src=tmp_path / "src")


def test_an_executed_copy_older_than_its_notebook_is_refused(tmp_path):
    folder, path = _copy(tmp_path, "02")
    _fake_executed(path, tmp_path / "executed", edit=True)
    with pytest.raises(book.BookError, match=r"02_hole_algorithm\.ipynb changed since .* run `make figures` again"):
        book.stage(folder=folder, executed_dir=tmp_path / "executed", src=tmp_path / "src")


def test_the_paper_against_ours_page_shows_each_claim_of_the_books_notebooks(tmp_path):
    """Every saved claim of a notebook in the book is a row: the paper's source and gap, ours with the seed sd,
    the verdict and its measured reason; claims of notebooks outside the book stay out."""
    from dlcore.zoo.claims import Claim, Ledger

    folder, path = _copy(tmp_path, "02")
    _fake_executed(path, tmp_path / "executed")
    ledger = Ledger(smoke=False)
    ledger.measure(Claim("ASPP-L > LargeFOV, before the CRF", "v2 Table 3", 3.2), [60, 61, 62], [55, 56, 57])
    ledger.measure(Claim("ASPP-L > ASPP-S, before the CRF", "v2 Table 3", 1.98), [60, 61, 62], [61, 62, 63])
    ledger.fact(Claim("LargeFOV trains at least 3x as fast as 7x7 (multiply-adds)", "v1 Table 2", 3.36), 4.7, True)
    ledger.check(not_reproduced={"ASPP-L > ASPP-S, before the CRF": "rate 24 reads padding"})
    claims = tmp_path / "claims"
    ledger.save(claims, "02")
    ledger.save(claims, "06")  # not in this book
    src = book.stage(folder=folder, executed_dir=tmp_path / "executed", src=tmp_path / "src", claims_dir=claims)
    text = (src / "paper_vs_ours.md").read_text()
    assert "| ASPP-L > LargeFOV, before the CRF | v2 Table 3: +3.20 | +5.00 (sd 1.00, 3 seeds) | holds |" in text
    assert "| ASPP-L > ASPP-S, before the CRF | v2 Table 3: +1.98 | -1.00 (sd 1.00, 3 seeds) | NOT reproduced: " \
           "rate 24 reads padding |" in text
    assert "| v1 Table 2: 3.36 | 4.70 | holds |" in text and "## 06" not in text
    assert "paper_vs_ours" in (src / "index.md").read_text()


def test_the_cli_says_which_command_to_run_first(tmp_path, capsys):
    from dlcore.cli import main

    assert main(["book", "--executed", str(tmp_path / "nothing"), "--out", str(tmp_path / "site")]) == 2
    err = capsys.readouterr().err
    assert "python -m dlcore book:" in err and "run `make figures` first" in err


# ------------------------------------------------------------------------------------------------ in a browser

needs_chromium = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Notebooks 02 and 04 executed in smoke mode (their figures into a scratch folder, not figures/)."""
    tmp = tmp_path_factory.mktemp("executed")
    for number in BOOK_NOTEBOOKS:
        run_notebook(notebooks(number)[0], tmp / "out", tmp / "figures", smoke=True, device="cpu", timeout=600)
    return tmp / "out"


@pytest.fixture(scope="module")
def site(executed, tmp_path_factory):
    """The book of notebooks 02 and 04."""
    tmp = tmp_path_factory.mktemp("book")
    return book.build(out=tmp / "site", src=tmp / "src", executed_dir=executed, only=BOOK_NOTEBOOKS)


def check_site(index: Path) -> tuple[list[str], int]:
    """Every page reached from the table of contents, from disk and offline: (problems, pages visited)."""
    driver = offline_chrome()
    problems, seen, queue = [], set(), [index.as_uri()]
    try:
        while queue:
            url = queue.pop(0).split("#")[0]
            if url in seen:
                continue
            seen.add(url)
            if not file_of(url).exists():
                problems.append(f"the table of contents links to a missing page: {url}")
                continue
            driver.get(url)
            page = file_of(url).relative_to(index.parent)
            if not driver.find_elements("css selector", "article h1"):
                problems.append(f"{page}: no content (no heading in the article)")
            problems += [f"{page}: image not shown: {src}" for src in broken_images(driver)]
            problems += [f"{page}: broken link: {href}" for href in broken_local_links(driver)]
            queue += driver.execute_script(
                "return Array.from(document.querySelectorAll('.bd-docs-nav a[href], .toctree-wrapper a[href]'))"
                ".map(a => a.href)")
        problems += [f"a request left the machine: {u}" for u in requests_leaving(driver)]
    finally:
        driver.quit()
    return problems, len(seen)


@needs_chromium
def test_the_book_reads_offline(site):
    problems, pages = check_site(site)
    assert not problems, "\n".join(problems)
    # the front page, a page per paper (FCN, DeepLab v1 here), the two notebooks, the answers page and two answers
    assert pages >= 7, f"the table of contents reached only {pages} pages"
    html = (site.parent / "notebooks" / "04_dense_crf.html").read_text()
    assert html.count("<img") >= len(json.loads(notebooks("04")[0].read_text())["metadata"]["dlcore"]["figures"])
    assert "mathjax/MathJax.js" in html and not NETWORK_ASSET.search(html)


@needs_chromium
def test_the_check_fails_on_a_broken_site(site, tmp_path):
    """The site check can fail: a deleted image, a dead link and a script from the network are all reported."""
    broken = tmp_path / "site"
    shutil.copytree(site.parent, broken)
    page = broken / "notebooks" / "04_dense_crf.html"
    image = next((broken / "_images").glob("*.png"))
    image.unlink()
    html = page.read_text().replace("</body>", '<a href="gone.html">x</a>'
                                    '<script src="https://example.org/x.js"></script></body>')
    page.write_text(html)
    problems, _ = check_site(broken / "index.html")
    text = "\n".join(problems)
    assert "image not shown" in text, text
    assert "broken link" in text and "gone.html" in text, text
    assert "a request left the machine: https://example.org/x.js" in text, text


# ------------------------------------------------------------------------------------------------------ slides

def test_every_cell_of_a_slide_notebook_has_a_slide_type():
    from dlcore.slides import check_slides, has_slides

    with_slides = [p for p in notebooks() if has_slides(p)]
    assert {p.name[:2] for p in with_slides} >= {"00", "01", "02", "04", "05", "06", "08", "09"}
    for path in with_slides:
        check_slides(path)


def test_a_notebook_without_slide_metadata_is_named(tmp_path):
    from dlcore.slides import SlidesError, export_all

    folder, path = _copy(tmp_path, "02")
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        cell["metadata"].pop("slideshow", None)
    path.write_text(json.dumps(nb))
    with pytest.raises(SlidesError, match=r"02_hole_algorithm\.ipynb has no slide metadata"):
        export_all(only="02", folder=folder, executed_dir=tmp_path / "executed", out_dir=tmp_path / "slides")
    decks, missing = export_all(folder=folder, executed_dir=tmp_path / "executed", out_dir=tmp_path / "slides")
    assert decks == [] and missing == ["02_hole_algorithm.ipynb"]


@needs_chromium
def test_a_deck_renders_and_advances_offline(executed, tmp_path):
    from dlcore.slides import export_all

    decks, _ = export_all(only="04", executed_dir=executed, out_dir=tmp_path / "slides")
    deck = decks[0]
    html = deck.read_text()
    assert not NETWORK_ASSET.search(html) and 'src="reveal.js/dist/reveal.js"' in html
    driver = offline_chrome()
    try:
        driver.get(deck.as_uri())
        ready = driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const wait = (n) => (window.Reveal && Reveal.isReady()) ? done(true) : n ? setTimeout(() => wait(n - 1), 100) : done(false);
            wait(100);""")
        assert ready, "reveal.js did not start (is reveal.js/ beside the deck?)"
        total = driver.execute_script("return Reveal.getTotalSlides()")
        assert total >= 8, f"the deck has {total} slides"
        first = driver.execute_script("return [Reveal.getIndices().h, Reveal.getCurrentSlide().innerText]")
        assert "fully connected CRF" in first[1], first[1][:200]
        driver.execute_script("Reveal.next()")
        assert driver.execute_script("return Reveal.getIndices().h") == first[0] + 1 or \
            driver.execute_script("return Reveal.getIndices().v") == 1, "Reveal.next() did not advance"
        shown = driver.execute_script(
            "return Array.from(document.querySelectorAll('.reveal .slides img')).filter(i => i.naturalWidth > 0).length")
        assert shown >= 6, f"the deck shows {shown} figures"
        leaving = requests_leaving(driver)
        assert not leaving, f"requests left the machine: {leaving}"
    finally:
        driver.quit()
