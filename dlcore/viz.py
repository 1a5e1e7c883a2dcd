"""Figures: reproducible PNGs, label overlays."""

import os
from pathlib import Path

import matplotlib
import numpy as np

from dlcore.io import atomic_write

DPI = 100
FIG_DIR_ENV = "DLCORE_FIG_DIR"


# Slides: a figure is read on a 1280 x 720 projector, so no text in a saved figure is smaller than this.
MIN_FONT_PT = 10


def readable(fig, min_pt: float = MIN_FONT_PT):
    """Raise every text of `fig` (titles, labels, ticks, legends, annotations) to at least `min_pt` points at the
    saved size; returns `fig`. Called by `savefig`, so every figure a notebook saves meets the slide minimum."""
    from matplotlib.text import Text

    for ax in fig.axes:  # tick labels are made again at draw time from the axis' tick parameters: set those
        for axis in (ax.xaxis, ax.yaxis):
            for which in ("major", "minor"):
                labels = axis.get_ticklabels(which=which)
                if labels and min(t.get_fontsize() for t in labels) < min_pt:
                    axis.set_tick_params(which=which, labelsize=min_pt)
    for text in fig.findobj(Text):
        if text.get_text() and text.get_fontsize() < min_pt:
            text.set_fontsize(min_pt)
    return fig


# The folder the notebooks live in: their FIG_DIR = "../figures" is relative to it.
NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def notebook_path(path: str | Path) -> Path:
    """A path as a notebook means it (FIG_DIR, ZOO_DIR, RETRAIN_DIR): a relative one against the notebooks' folder,
    not against the folder papermill or python was started in (from the repository root, "../figures" would leave
    the checkout). Where dlcore is installed without its notebooks, against the working folder."""
    path = Path(path)
    if path.is_absolute() or not NOTEBOOKS_DIR.is_dir():
        return path
    return Path(os.path.normpath(NOTEBOOKS_DIR / path))


def savefig(fig, name: str, fig_dir: str | Path = "../figures") -> Path:
    """Write `fig_dir/name.png` at a fixed dpi with no timestamp, so a regenerated figure changes only with its
    content; every text at least `MIN_FONT_PT` (see `readable`). A relative `fig_dir`: see `notebook_path`."""
    readable(fig)
    # Agg + no "Software"/date metadata -> byte-identical output for identical content.
    return atomic_write(notebook_path(fig_dir) / f"{name}.png",
                        lambda f: fig.savefig(f, dpi=DPI, metadata={"Software": None}, format="png"))


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


def show(fig, name: str, fig_dir: str | Path = "../figures") -> None:
    """Save `fig` as `fig_dir/name.png` (see `savefig`) and display it where it was made (then close it), so a
    student running the notebook sees every figure the notebook saves. Returns nothing, so that a cell ending with
    it shows the figure and not the file's path."""
    import matplotlib.pyplot as plt

    savefig(fig, name, fig_dir)
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display(fig)
    finally:
        plt.close(fig)


# Distinct colours for SyntheticScenes' 11 classes (the VOC palette draws several of them in dark reds).
SCENE_COLOURS = np.array([
    [0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [40, 90, 160], [240, 50, 230], [170, 110, 40],
], dtype=np.uint8)


def colour_labels(labels, ignore_index: int = 255, palette: np.ndarray = SCENE_COLOURS) -> np.ndarray:
    """uint8 [H,W,3] colouring of labels [H,W] with `palette` (SyntheticScenes' `SCENE_COLOURS` by default; VOC's
    `dlcore.data.palette.VOC_PALETTE` for VOC); void shows white."""
    labels = np.asarray(labels)
    out = np.asarray(palette)[np.where(labels == ignore_index, 0, labels).clip(0, len(palette) - 1)].astype(np.uint8)
    out[labels == ignore_index] = 255
    return out


def legend_columns(width_inches: float) -> int:
    """How many legend entries fit side by side in a figure `width_inches` wide at `MIN_FONT_PT`."""
    return max(2, int(width_inches // 1.9))


def class_legend(fig, class_names, classes, palette: np.ndarray = SCENE_COLOURS, void: bool = True,
                 ncol: int | None = None, y: float = 0.0):
    """One legend for the figure, under it: a swatch and the name of each class in `classes` (and void)."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=np.asarray(palette)[c] / 255, edgecolor="0.5", label=class_names[c])
               for c in sorted(classes)]
    if void:
        handles.append(Patch(facecolor="white", edgecolor="0.5", label="void"))
    ncol = ncol or legend_columns(fig.get_figwidth())
    return fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, y), ncol=min(len(handles), ncol),
                      fontsize=MIN_FONT_PT, frameon=False)


def segmentation_grid(images, columns: dict, class_names, *, ground_truth=None, size: float = 2.2,
                      palette: np.ndarray = SCENE_COLOURS):
    """A figure with one row per image: image | ground truth | one label map per entry of `columns`
    ({title: labels [N,H,W]}), side by side, and one class legend for the classes shown."""
    import matplotlib.pyplot as plt

    images = [np.asarray(im.permute(1, 2, 0) if hasattr(im, "permute") else im) for im in images]
    maps = ({"ground truth": ground_truth} if ground_truth is not None else {}) | columns
    n, k = len(images), 1 + len(maps)
    seen = {int(c) for labels in maps.values() for lab in labels[:n] for c in np.unique(np.asarray(lab)) if c != 255}
    ncol = legend_columns(size * k)
    legend_inches = 0.28 * -(-(len(seen) + 1) // ncol) + 0.1  # a row of the legend per ncol entries (void included)
    height = size * n + 0.35 + legend_inches
    fig, axes = plt.subplots(n, k, figsize=(size * k, height), squeeze=False)
    for r in range(n):
        axes[r, 0].imshow(images[r])
        for c, (title, labels) in enumerate(maps.items(), start=1):
            lab = np.asarray(labels[r])
            axes[r, c].imshow(colour_labels(lab, palette=palette), interpolation="nearest")
            if r == 0:
                axes[r, c].set_title(title, fontsize=MIN_FONT_PT + 1)
        if r == 0:
            axes[r, 0].set_title("image", fontsize=MIN_FONT_PT + 1)
    for ax in axes.flat:
        ax.set_xticks([]); ax.set_yticks([])
    class_legend(fig, class_names, seen, palette, ncol=ncol)
    fig.tight_layout(rect=(0, legend_inches / height, 1, 1), w_pad=0.3, h_pad=0.3)
    return fig
