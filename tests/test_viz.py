"""dlcore.viz: reproducible figures, overlays, and widgets that headless runs skip."""

import numpy as np
import pytest

from dlcore import viz


def test_widgets_are_skipped_headless_and_built_in_jupyterlab(monkeypatch, capsys):
    calls = []

    def show(rate=1):
        calls.append(rate)

    monkeypatch.setenv(viz.HEADLESS_ENV, "1")
    assert viz.interact(show, rate=(1, 8)) is None and viz.show_widget(lambda: 1 / 0) is None
    assert calls == [] and "static cell" in capsys.readouterr().out
    monkeypatch.delenv(viz.HEADLESS_ENV)
    ipywidgets = pytest.importorskip("ipywidgets")
    shown = viz.interact(show, rate=(1, 8))
    assert isinstance(shown.widget, ipywidgets.interactive) and calls == [1]  # called once, at the default
    assert isinstance(viz.show_widget(lambda: ipywidgets.IntSlider(3)), ipywidgets.IntSlider)


def test_savefig_is_byte_identical_for_identical_content(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name in ("a", "b"):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [1, 0])
        paths.append(viz.savefig(fig, name, tmp_path))
        plt.close(fig)
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_overlay_checks_sizes():
    image = np.zeros((4, 5, 3), np.uint8)
    assert viz.overlay(image, np.zeros((4, 5), np.int64)).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="same size"):
        viz.overlay(image, np.zeros((5, 4), np.int64))
