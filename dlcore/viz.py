"""Figures: reproducible PNGs, label overlays."""

import os
from pathlib import Path

import matplotlib
import numpy as np

DPI = 100
FIG_DIR_ENV = "DLCORE_FIG_DIR"


def savefig(fig, name: str, fig_dir: str | Path = "../figures") -> Path:
    """Write `fig_dir/name.png` at a fixed dpi with no timestamp, so a regenerated figure changes only with its content."""
    out = Path(fig_dir) / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    # Agg + no "Software"/date metadata -> byte-identical output for identical content.
    fig.savefig(out, dpi=DPI, metadata={"Software": None}, format="png")
    return out


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5, ignore_index: int = 255) -> np.ndarray:
    """Blend a VOC-palette colouring of `labels` [H,W] over `image` uint8 [H,W,3]; void pixels show white."""
    from dlcore.data.palette import colorize

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != np.shape(labels):
        raise ValueError(f"overlay needs image [H,W,3] and labels [H,W] of the same size, got {image.shape} and {np.shape(labels)}")
    colours = colorize(labels, ignore_index=ignore_index).astype(np.float32)
    out = (1 - alpha) * image.astype(np.float32) + alpha * colours
    return out.clip(0, 255).astype(np.uint8)


def use_headless_backend() -> None:
    """Agg when no display is there (papermill, CI); notebooks in JupyterLab keep their inline backend."""
    if not matplotlib.get_backend().lower().startswith(("module://matplotlib_inline", "inline")):
        matplotlib.use("Agg")


# Headless runs (papermill: `make figures`, the notebook tests) set this in the kernel's environment. Widgets
# there have no front end to talk to, and nbclient can block for ever on a cell that opens widget comms
# (jupyter/nbclient#312), so the widget helpers below only say what they skipped; the static cell beside each
# widget shows the same call.
HEADLESS_ENV = "DLCORE_HEADLESS"


def headless() -> bool:
    """True inside `python -m dlcore figures` and the notebook tests, False in JupyterLab."""
    return os.environ.get(HEADLESS_ENV) == "1"


def interact(fn, **controls):
    """`ipywidgets.interact(fn, **controls)` in JupyterLab; in a headless run, a note instead of the widget."""
    if headless():
        print(f"(interactive {getattr(fn, '__name__', 'widget')}: shown in JupyterLab; the static cell beside it "
              "makes the same call)")
        return None
    import ipywidgets

    return ipywidgets.interact(fn, **controls)


def show_widget(make):
    """Display the widget that `make()` builds, in JupyterLab only (see `interact`)."""
    if headless():
        print(f"(widget {getattr(make, '__name__', '')}: shown in JupyterLab; the static cell beside it makes the same call)")
        return None
    from IPython.display import display

    widget = make()
    display(widget)
    return widget
