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


def test_saved_figures_have_no_text_below_the_slide_minimum(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], label="a")
    ax.set_title("tiny", fontsize=6); ax.legend(fontsize=5); ax.tick_params(labelsize=4)
    ax.text(0.5, 0.5, "note", fontsize=12)
    viz.savefig(fig, "small", tmp_path)
    sizes = {t.get_text(): t.get_fontsize() for t in fig.findobj(Text) if t.get_text()}
    plt.close(fig)
    assert min(sizes.values()) >= viz.MIN_FONT_PT, sizes
    assert sizes["note"] == 12, "larger text stays as it was"


def test_segmentation_grid_uses_the_scene_palette_and_a_legend():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.array([[0, 1], [9, 255]])
    colours = viz.colour_labels(labels)
    assert (colours[1, 1] == 255).all() and (colours[0, 1] == viz.SCENE_COLOURS[1]).all()
    assert len({tuple(c) for c in viz.SCENE_COLOURS}) == len(viz.SCENE_COLOURS), "distinct colours per class"
    names = [f"c{i}" for i in range(11)]
    fig = viz.segmentation_grid([np.zeros((2, 2, 3), np.uint8)], {"pred": [labels]}, names, ground_truth=[labels])
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    plt.close(fig)
    assert legend == ["c0", "c1", "c9", "void"], legend
