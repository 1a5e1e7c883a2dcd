"""The classroom path: every notebook with a widget, opened in JupyterLab in headless Chromium.

For each widget notebook (a code cell calls `interact(` or `show_widget(`) a smoke-parameter copy is opened in a
real JupyterLab server on a free local port (with a token), all cells are run from the browser, and the test fails
on any error output, on a widget that did not render (or rendered twice), and when moving one slider does not
redraw the output beside it. Screenshots go to build/lab/ as test artifacts. Skipped, with the reason, where
Chromium, its driver or selenium is missing (`apt-get install chromium chromium-driver`; `make test` installs them).
Headless runs (papermill) still skip widgets: this is the only test that sees them.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dlcore.figures import NOTEBOOKS, notebooks, smoke_copy
from dlcore.viz import HEADLESS_ENV

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "lab"
CHROMIUM = [shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")]
CHROMEDRIVER = shutil.which("chromedriver")
WIDGET_CALL = re.compile(r"\b(interact|show_widget)\(")
RUN_SECONDS = 900  # all cells of one smoke notebook, from the browser (a minute or two on two free cores)
REDRAW_SECONDS = 120  # a redraw of the heaviest widget (05's CRF) on two shared cores in smoke mode


def widget_notebooks(folder: Path = NOTEBOOKS) -> list[Path]:
    """The notebooks with a code cell that makes a widget."""
    def has_widget(path):
        cells = json.loads(path.read_text())["cells"]
        return any(c["cell_type"] == "code" and WIDGET_CALL.search("".join(c["source"])) for c in cells)
    return [p for p in notebooks(folder=folder) if has_widget(p)]


def _browser() -> str | None:
    return next((b for b in CHROMIUM if b), None)


def _skip_reason() -> str | None:
    if _browser() is None or CHROMEDRIVER is None:
        return ("no Chromium: install it with `apt-get install -y chromium chromium-driver` "
                "(`make test` does) to run the JupyterLab browser test")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: `pip install -c constraints.txt -e .[test]`"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(folder: Path) -> None:
    """JupyterLab settings for a test: every cell in the DOM (no windowing), no news or update pop-ups."""
    for plugin, values in {"@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
                           "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                                            "checkForUpdates": False}}.items():
        target = folder / f"{plugin}.jupyterlab-settings"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values))


# A dialog (which kernel? save changes?) would block the page: accept it, and go on waiting (returns false).
ACCEPT_DIALOG = """
const button = document.querySelector('.jp-Dialog .jp-Dialog-button.jp-mod-accept');
if (button) { button.click(); }
return false;
"""


class Lab:
    """A JupyterLab server on `root` and a headless Chromium pointed at it."""

    def __init__(self, root: Path, work: Path):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.port, self.token = _free_port(), os.urandom(12).hex()
        _settings(work / "settings")
        env = {k: v for k, v in os.environ.items() if k != HEADLESS_ENV}  # the kernels must show the widgets
        env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
                   JUPYTERLAB_SETTINGS_DIR=str(work / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(work / "workspaces"),
                   JUPYTER_RUNTIME_DIR=str(work / "runtime"), OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
        self.log = open(work / "jupyterlab.log", "w")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={self.port}",
             "--ip=127.0.0.1", f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
             "--LabApp.expose_app_in_browser=True", "--ServerApp.port_retries=0"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_for_server()
        options = webdriver.ChromeOptions()
        options.binary_location = _browser()
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--window-size=1280,1000"):
            options.add_argument(arg)
        # An explicit driver path: selenium then never runs Selenium Manager, which would try to download one.
        self.driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)

    def _wait_for_server(self, seconds: float = 120):
        url = f"http://127.0.0.1:{self.port}/api/status?token={self.token}"
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.server.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not answer on port {self.port} within {seconds} s; see {self.log.name}")

    def close(self):
        try:
            self.driver.quit()
        finally:
            self.server.terminate()
            try:
                self.server.wait(20)
            except subprocess.TimeoutExpired:
                self.server.kill()
            self.log.close()

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def close_all(self):
        """Shut down every kernel and close every tab (unsaved: the copies are throwaway), so that the next
        notebook has the machine and the DOM to itself."""
        if not self.driver.current_url.startswith("http"):
            return
        self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1]; const app = window.jupyterapp;"
            "if (!app) { done(); return; }"
            "for (const w of app.shell.widgets('main')) { if (w.context) w.context.model.dirty = false; }"
            "app.serviceManager.sessions.shutdownAll()"
            ".then(() => app.commands.execute('application:close-all')).then(() => done(), () => done());")

    def open(self, name: str):
        """Open notebook `name` alone and wait until its kernel is ready."""
        if self.js("return !!window.jupyterapp;") if self.driver.current_url.startswith("http") else False:
            self.close_all()
        else:  # the first notebook: load JupyterLab itself (`reset`: no tabs restored from an earlier run)
            self.driver.get(f"http://127.0.0.1:{self.port}/lab?reset&token={self.token}")
            self._until(lambda: self.js("return !!(window.jupyterapp && window.jupyterapp.shell);"), 120,
                        "JupyterLab did not load")
            # the kernel specs must be known before a notebook opens, or JupyterLab asks which kernel to use
            self._until(lambda: self.js("const s = window.jupyterapp.serviceManager.kernelspecs.specs;"
                                        "return !!(s && s.kernelspecs && s.kernelspecs.python3);"), 120,
                        "JupyterLab did not finish starting (no python3 kernel spec)")
            # and the restored layout (a launcher) must be in place, or it would come up over the notebook
            self.js("window.__restored = false; window.jupyterapp.restored.then(() => { window.__restored = true; });")
            self._until(lambda: self.js("return window.__restored;"), 120, "JupyterLab did not restore its layout")
        self.js("window.jupyterapp.commands.execute('docmanager:open', {path: arguments[0]});", name)
        self._until(lambda: self.js(ACCEPT_DIALOG) or self.js(
            "const app = window.jupyterapp;"
            "const w = [...app.shell.widgets('main')].find(w => w.context && w.context.path.endsWith(arguments[0]));"
            "if (w && app.shell.currentWidget !== w) { app.shell.activateById(w.id); }"
            "return !!(w && w.sessionContext"
            " && w.sessionContext.session && w.sessionContext.session.kernel"
            " && w.sessionContext.session.kernel.status === 'idle');", name), 300, f"{name}: no idle kernel")

    def run_all(self) -> dict:
        """Run every cell from the browser (JupyterLab's own command); return the notebook as nbformat JSON, with
        `ran_all` True when the command completed. Polled in short calls: one long script call would outlast
        the webdriver client's read timeout."""
        self.js("window.__ran = undefined; window.jupyterapp.commands.execute('notebook:run-all-cells')"
                ".then(ok => { window.__ran = ok; }, e => { window.__ran = String(e); });")
        ran = self._until(lambda: self.js("return window.__ran === undefined ? null : [window.__ran];"),
                          RUN_SECONDS, "run-all did not finish", poll=2)[0]
        model = self.js("return window.jupyterapp.shell.currentWidget.content.model.toJSON();")
        model["ran_all"] = ran
        return model

    def _until(self, condition, seconds: float, message: str, poll: float = 0.5):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(poll)
        raise AssertionError(f"{message} (waited {seconds:.0f} s)")

    def screenshot(self, name: str) -> Path:
        path = BUILD / "screenshots" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path


def error_outputs(model: dict) -> list[str]:
    """'cell N: ename: evalue' for every error output of the notebook."""
    return [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(model["cells"])
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def widget_outputs(model: dict) -> dict[int, list[str]]:
    """{cell index: [widget model ids displayed by it]}."""
    out = {}
    for i, c in enumerate(model["cells"]):
        ids = [o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] for o in c.get("outputs", [])
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        if ids:
            out[i] = ids
    return out


# The DOM probes. Cells are in the DOM in order (windowing is off, see _settings).
RENDERED_WIDGETS = """
const cell = window.jupyterapp.shell.currentWidget.content.node.querySelectorAll('.jp-Cell')[arguments[0]];
const outputs = [...cell.querySelectorAll('.jp-OutputArea-child > .jp-OutputArea-output')];
return outputs.map(o => ({widget: !!o.querySelector('.jupyter-widgets'),
                          text: o.innerText.slice(0, 200)}));
"""
# JupyterLab renders an error output, in a cell or inside an Output widget, as a stderr-typed block with a traceback.
PAGE_ERRORS = """
return [...window.jupyterapp.shell.currentWidget.content.node
             .querySelectorAll('[data-mime-type="application/vnd.jupyter.error"], [data-mime-type="application/vnd.jupyter.stderr"]')]
  .map(e => e.innerText).filter(t => t.includes('Traceback')).map(t => t.trim().split('\\n').pop().slice(0, 300));
"""
# A signature of what a widget shows: its images (the figure a callback redrew) and its readouts.
WIDGET_STATE = """
const cell = window.jupyterapp.shell.currentWidget.content.node.querySelectorAll('.jp-Cell')[arguments[0]];
const area = cell.querySelector('.jp-OutputArea');
return {images: [...area.querySelectorAll('img')].map(i => i.src.length + ':' + i.src.slice(-64)),
        readouts: [...area.querySelectorAll('.widget-readout')].map(r => r.innerText)};
"""


def _first_handle(lab: Lab, cell: int):
    from selenium.webdriver.common.by import By

    node = lab.js("return window.jupyterapp.shell.currentWidget.content.node;")
    return node.find_elements(By.CSS_SELECTOR, ".jp-Cell")[cell].find_element(By.CSS_SELECTOR,
                                                                              ".widget-slider .noUi-handle")


def move_first_slider(lab: Lab, cell: int, moved) -> bool:
    """Drag the first slider handle of cell `cell` to the right, as a lecturer would; if `moved()` does not say
    it moved, press the arrow key on it (noUiSlider's keyboard support). True once it moved."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    handle = _first_handle(lab, cell)
    lab.js("arguments[0].scrollIntoView({block: 'center'});", handle)
    ActionChains(lab.driver).click_and_hold(handle).move_by_offset(40, 0).release().perform()
    for _ in range(20):
        if moved():
            return True
        time.sleep(0.5)
    handle.send_keys(Keys.ARROW_RIGHT * 3)
    for _ in range(20):
        if moved():
            return True
        time.sleep(0.5)
    return False


def check_notebook(lab: Lab, name: str, redraw_seconds: float = REDRAW_SECONDS) -> list[str]:
    """Open `name`, run all its cells, check its widgets and move one slider; return the problems found."""
    lab.open(name)
    model = lab.run_all()
    stem = Path(name).stem
    problems = error_outputs(model)
    if model["ran_all"] is not True:
        problems.append(f"run-all did not complete: {model['ran_all']}")
    widgets = widget_outputs(model)
    if not widgets:
        problems.append("no widget was displayed")
    for cell, ids in widgets.items():
        if len(set(ids)) < len(ids):
            problems.append(f"cell {cell}: the same widget is displayed {len(ids) - len(set(ids)) + 1} times")
        rendered = lambda: [o for o in lab.js(RENDERED_WIDGETS, cell) if o["widget"]]  # noqa: E731
        try:  # the front end renders a widget after the kernel has answered
            lab._until(lambda: len(rendered()) >= len(ids), 60, "")
        except AssertionError:
            pass
        rendered = rendered()
        if len(rendered) < len(ids) or any("Error displaying widget" in o["text"] for o in rendered):
            problems.append(f"cell {cell}: {len(ids)} widget outputs, {len(rendered)} rendered: "
                            f"{[o['text'] for o in rendered]}")
    sliders = [c for c in widgets if lab.js(
        "return !!window.jupyterapp.shell.currentWidget.content.node.querySelectorAll('.jp-Cell')[arguments[0]]"
        ".querySelector('.widget-slider .noUi-handle');", c)]
    if not sliders:
        lab.screenshot(f"{stem}_ran")
        return problems + ["no slider to move"]
    cell = sliders[0]
    lab.js("arguments[0].scrollIntoView({block: 'start', inline: 'nearest'});", _first_handle(lab, cell))
    lab.screenshot(f"{stem}_ran")
    before = lab.js(WIDGET_STATE, cell)
    if not move_first_slider(lab, cell, lambda: lab.js(WIDGET_STATE, cell)["readouts"] != before["readouts"]):
        problems.append(f"cell {cell}: the slider did not move (neither dragged nor by the arrow key)")
    else:
        try:
            lab._until(lambda: (now := lab.js(WIDGET_STATE, cell))["images"] and now["images"] != before["images"],
                       redraw_seconds, f"cell {cell}: moving the slider did not redraw the output")
        except AssertionError as e:
            problems.append(str(e))
    time.sleep(1)  # an error printed by the callback arrives with, or just after, its output
    problems += [f"after the slider: {e}" for e in lab.js(PAGE_ERRORS)]
    lab.js("arguments[0].scrollIntoView({block: 'start', inline: 'nearest'});", _first_handle(lab, cell))
    lab.screenshot(f"{stem}_slider_moved")
    return problems


@pytest.fixture(scope="module")
def lab():
    if BUILD.exists():
        shutil.rmtree(BUILD)
    for sub in ("notebooks", "figures"):
        (BUILD / sub).mkdir(parents=True)
    session = Lab(BUILD / "notebooks", BUILD)
    yield session
    session.close()


WIDGET_NOTEBOOKS = widget_notebooks()


def test_there_are_widget_notebooks():
    assert WIDGET_NOTEBOOKS, "no notebook calls interact( or show_widget(: the classroom path has nothing to test"


@pytest.mark.notebook
@pytest.mark.parametrize("path", WIDGET_NOTEBOOKS, ids=[p.stem for p in WIDGET_NOTEBOOKS])
def test_widgets_work_in_jupyterlab(lab, path):
    copy = smoke_copy(path, BUILD / "notebooks", BUILD / "figures")
    problems = check_notebook(lab, copy.name)
    assert not problems, f"{path.name} in JupyterLab (screenshots in {BUILD / 'screenshots'}):\n  " + "\n  ".join(problems)


BROKEN = {
    # the callback raises once the slider moves: the error shows inside the widget
    "raises": "def draw(rate=2):\n    assert rate == 2, 'broken on purpose'\n    plt.plot([0, rate]); plt.show()\n",
    # the callback draws nothing new: the output does not redraw
    "frozen": "def draw(rate=2):\n    if rate == 2:\n        plt.plot([0, 1]); plt.show()\n",
}


@pytest.mark.notebook
@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_widget_fails(lab, kind):
    """The check above is not vacuous: a widget broken on purpose is reported."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nfrom dlcore.viz import interact"),
                nbformat.v4.new_code_cell(BROKEN[kind] + "interact(draw, rate=(1, 9));")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    name = f"broken_{kind}.ipynb"
    nbformat.write(nb, BUILD / "notebooks" / name)
    problems = check_notebook(lab, name, redraw_seconds=15)
    expected = "broken on purpose" if kind == "raises" else "did not redraw"
    print(f"{kind} widget reported as: {problems}")
    assert any(expected in p for p in problems), f"the {kind} widget was not reported: {problems}"
