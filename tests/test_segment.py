"""`python -m dlcore segment`: label PNG + overlay per image, EXIF orientation, large images, clean failures."""

import numpy as np
import pytest
import torch
from PIL import Image

from dlcore.cli import main
from dlcore.checkpoint import checkpoint_meta, save_checkpoint
from dlcore.data.palette import read_label_png
from dlcore.models import build_model
from dlcore.segment import fit_max_side

W = 0.0625


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("deeplab-v1-largefov", width=W)
    path = tmp_path_factory.mktemp("ckpt") / "largefov.pt"
    return save_checkpoint(path, model=model.state_dict(), step=0, meta=checkpoint_meta(model))


def _photo(path, width, height, orientation=None, seed=0):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation  # EXIF Orientation; 6 = the camera was turned: rotate 90 degrees to view
    image.save(path, exif=exif.tobytes()) if orientation else image.save(path)
    return path


def _run(*args):
    return main(["segment", *map(str, args), "--no-progress"])


def test_segments_files_and_folders_with_exif_orientation(tmp_path, checkpoint):
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos / "portrait.jpg", 40, 24, orientation=6)  # stored 40 wide, 24 high; shown 24 wide, 40 high
    _photo(photos / "plain.png", 33, 21, seed=1)
    (photos / "notes.txt").write_text("not an image: ignored in a folder")
    single = _photo(tmp_path / "single.jpg", 30, 30, seed=2)
    out = tmp_path / "out"
    assert _run(photos, single, "--checkpoint", checkpoint, "--model", "deeplab-v1-largefov", "--out", out) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}{e}" for s in ("portrait", "plain", "single") for e in (".png", "_overlay.jpg"))
    labels = read_label_png(out / "portrait.png")
    assert labels.shape == (40, 24), "EXIF orientation 6 must give the rotated (portrait) size"
    assert labels.min() >= 0 and labels.max() < 21
    with Image.open(out / "portrait.png") as im:
        assert im.mode == "P"
    with Image.open(out / "portrait_overlay.jpg") as im:
        assert im.size == (24, 40)
    assert read_label_png(out / "plain.png").shape == (21, 33)


def test_large_images_are_resized_and_labels_brought_back(tmp_path, checkpoint):
    assert fit_max_side(3000, 4000, 1024) == (768, 1024)
    assert fit_max_side(100, 50, 1024) == (100, 50)
    big = _photo(tmp_path / "big.png", 150, 90)
    out = tmp_path / "out"
    assert _run(big, "--checkpoint", checkpoint, "--out", out, "--max-side", 48, "--overlay-format", "png",
                "--crf") == 0
    assert read_label_png(out / "big.png").shape == (90, 150)
    with Image.open(out / "big_overlay.png") as im:
        assert im.size == (150, 90)


def test_normalization_comes_from_the_checkpoint(tmp_path, monkeypatch):
    import dlcore.inference

    model = build_model("deeplab-v1-largefov", width=W)
    ckpt = save_checkpoint(tmp_path / "caffe.pt", model=model.state_dict(), step=0,
                           meta=checkpoint_meta(model, normalize="caffe"))
    seen = []
    original = dlcore.inference.Predictor.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("normalize"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(dlcore.inference.Predictor, "__init__", spy)
    assert _run(_photo(tmp_path / "a.png", 20, 20), "--checkpoint", ckpt, "--out", tmp_path / "out") == 0
    assert seen == ["caffe"]


def test_corrupt_image_fails_before_anything_is_written(tmp_path, checkpoint, capsys):
    good = _photo(tmp_path / "good.jpg", 20, 20)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:200])  # a truncated JPEG
    out = tmp_path / "out"
    assert _run(good, bad, "--checkpoint", checkpoint, "--out", out) == 2
    assert "bad.jpg" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    assert _run(tmp_path / "missing.jpg", "--checkpoint", checkpoint, "--out", out) == 2
    assert "missing.jpg" in capsys.readouterr().err


def test_bad_or_foreign_checkpoint_fails_cleanly(tmp_path, checkpoint, capsys):
    image = _photo(tmp_path / "a.png", 20, 20)
    out = tmp_path / "out"
    assert _run(image, "--checkpoint", checkpoint, "--model", "fcn8s", "--out", out) == 2
    assert "is for model deeplab-v1-largefov, not fcn8s" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    assert _run(image, "--checkpoint", junk, "--out", out) == 2
    assert "junk.pt" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
