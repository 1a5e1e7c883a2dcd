"""Issue 15: bad inputs give one clear error before any work, never lost data or a silently wrong result.

One table of bad inputs per command. Each case asserts the exception type (or exit code) and that the message
names the problem. CLI cases also assert the convention of docs/reliability.md: one line on stderr,
`python -m dlcore CMD: problem; fix`, exit 2 for bad input, no traceback (unless --debug).
All fixtures are tiny and written here; nothing downloads.
"""

import io
import json
import os
import stat
import struct
import tarfile
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from dlcore.cli import main
from dlcore.checkpoint import checkpoint_meta, load_checkpoint, load_model, save_checkpoint
from dlcore.crf import DenseCRF, dense_crf
from dlcore.models import build_model

torch.set_num_threads(1)
MODEL = "deeplab-v1-largefov"
W = 0.0625
TINY = ["--width", str(W), "--size", "32", "--n-train", "4", "--batch-size", "2", "--device", "cpu",
        "--no-progress", "--checkpoint-every", "0"]


def one_line(capsys, command: str) -> str:
    """The error convention: a single stderr line naming the command, no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"python -m dlcore {command}: "), err
    return err


def _photo(path, size=(20, 16), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A 21-class (VOC) checkpoint of a tiny DeepLab-LargeFOV."""
    torch.manual_seed(0)
    model = build_model(MODEL, width=W)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.pt", model=model.state_dict(), step=0,
                           meta=checkpoint_meta(model))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 1-step synthetic training run (CLI), for resume and eval cases."""
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--model", MODEL, *TINY, "--steps", "1", "--checkpoint-dir", str(out)]) == 0
    return out


def _segment(*args):
    return main(["segment", *map(str, args), "--no-progress"])


# ================================================================================ 1. no input overwritten

def test_segment_refuses_to_overwrite_an_input(tmp_path, ckpt, capsys):
    photo = _photo(tmp_path / "photo.png")
    before = photo.read_bytes()
    assert _segment(tmp_path, "--checkpoint", ckpt, "--out", tmp_path) == 2
    err = one_line(capsys, "segment")
    assert "would overwrite the input" in err and "photo.png" in err
    assert photo.read_bytes() == before


def test_segment_refuses_outputs_that_share_a_name(tmp_path, ckpt, capsys):
    photos = tmp_path / "in"
    photos.mkdir()
    _photo(photos / "a.png")
    _photo(photos / "a_overlay.jpg", seed=1)
    out = tmp_path / "out"
    assert _segment(photos, "--checkpoint", ckpt, "--out", out, "--overlay-format", "png") == 2
    err = one_line(capsys, "segment")
    assert "a.png" in err and "a_overlay.jpg" in err and "would both write" in err and "a_overlay.png" in err
    assert not out.exists()  # checked before anything is written


def test_import_caffe_refuses_to_overwrite_its_input(tmp_path, capsys):
    model_file = tmp_path / "m.caffemodel"
    model_file.write_bytes(b"the published weights")
    assert main(["import-caffe", str(model_file), "--model", MODEL, "--out", str(model_file)]) == 2
    assert "is the input caffemodel itself" in one_line(capsys, "import-caffe")
    assert model_file.read_bytes() == b"the published weights"
    folder = tmp_path / "dir"
    folder.mkdir()
    assert main(["import-caffe", str(model_file), "--model", MODEL, "--out", str(folder)]) == 2
    assert "is a folder" in one_line(capsys, "import-caffe")


# ================================================================================ 2. images read right

def test_16_bit_images_are_scaled_by_their_range(tmp_path, ckpt):
    from dlcore.data import read_image as read_photo

    grey = np.linspace(0, 65535, 20 * 16).reshape(16, 20).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "deep.png")
    image = read_photo(tmp_path / "deep.png")
    assert image.dtype == torch.uint8 and image.shape == (3, 16, 20)
    expected = np.round(grey.astype(np.float64) * 255 / 65535)
    assert np.abs(image[0].numpy().astype(np.float64) - expected).max() <= 0.5 + 1e-9
    assert abs(float(image.float().mean()) - 127.5) < 1  # not clipped to white (PIL's convert: mean ~254.8)
    assert _segment(tmp_path / "deep.png", "--checkpoint", ckpt, "--out", tmp_path / "out") == 0


def test_float_images_are_refused(tmp_path, ckpt, capsys):
    Image.fromarray(np.full((16, 20), 0.5, np.float32)).save(tmp_path / "float.tif")
    assert _segment(tmp_path / "float.tif", "--checkpoint", ckpt, "--out", tmp_path / "out") == 2
    err = one_line(capsys, "segment")
    assert "float.tif" in err and "floating-point" in err
    assert not (tmp_path / "out").exists()


def _png_claiming(path, width, height):
    """A tiny PNG whose header claims width x height pixels (valid CRCs), as a decompression bomb does."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_one_line(tmp_path, ckpt, capsys):
    bomb = _png_claiming(tmp_path / "bomb.png", 30000, 30000)
    assert _segment(bomb, "--checkpoint", ckpt, "--out", tmp_path / "out") == 2
    err = one_line(capsys, "segment")
    assert "bomb.png" in err and "too large" in err


# ================================================================================ 3. no NaN results

@pytest.fixture(scope="module")
def crf_inputs():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)
    probs = rng.random((3, 12, 14)).astype(np.float32)
    return image, probs / probs.sum(0)


@pytest.mark.parametrize("kwargs, match", [
    # overflowing kernel widths and weights (gave an all-NaN Q)
    (dict(sigma_alpha=1e-20), "sigma_alpha"), (dict(sigma_beta=1e-30), "sigma_beta"),
    (dict(sigma_gamma=1e-30), "sigma_gamma"), (dict(w1=1e300), "w1"), (dict(w2=1e39), "w2"),
    (dict(sigma_alpha=float("nan")), "sigma_alpha"), (dict(w1=float("inf")), "w1"),
    # raw TypeError / OverflowError / AttributeError before
    (dict(iterations=None), "iterations"), (dict(iterations=float("nan")), "iterations"),
    (dict(iterations=float("inf")), "iterations"), (dict(iterations=-3), "iterations"),
    (dict(w1="4"), "w1"), (dict(max_memory_bytes="x"), "max_memory_bytes"), (dict(trace=5), "trace"),
    (dict(normalization="both"), "normalization"),
])
def test_dense_crf_refuses_bad_parameters(crf_inputs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dense_crf(*crf_inputs, **kwargs)


def test_dense_crf_checks_q_is_finite(crf_inputs, monkeypatch):
    import dlcore.crf

    monkeypatch.setattr(dlcore.crf, "mean_field", lambda unary, *a, **k: torch.full_like(unary, float("nan")))
    with pytest.raises(FloatingPointError, match="NaN"):
        dense_crf(*crf_inputs, trace=[])  # trace: the pure-torch mean-field path


def test_non_finite_weights_are_refused_at_load(tmp_path, capsys):
    model = build_model(MODEL, width=W)
    state = model.state_dict()
    state["head.fc8.weight"][0, 0] = float("nan")
    path = save_checkpoint(tmp_path / "nan.pt", model=state, step=0, meta=checkpoint_meta(model))
    with pytest.raises(ValueError, match="NaN or Inf values in head.fc8.weight"):
        load_model(path)
    assert _segment(_photo(tmp_path / "a.png"), "--checkpoint", path, "--out", tmp_path / "out", "--crf") == 2
    assert "NaN or Inf" in one_line(capsys, "segment") and not (tmp_path / "out").exists()


def test_non_finite_caffe_weights_are_refused(tmp_path, capsys):
    from dlcore.caffe import export_caffe, write_caffemodel

    layers = export_caffe(build_model(MODEL, width=W))
    layers[0][2][0][0, 0, 0, 0] = np.nan  # conv1_1's weight
    path = write_caffemodel(tmp_path / "nan.caffemodel", layers)
    out = tmp_path / "nan.pt"
    assert main(["import-caffe", str(path), "--model", MODEL, "--out", str(out), "--width", str(W)]) == 2
    err = one_line(capsys, "import-caffe")
    assert "conv1_1" in err and "NaN or Inf" in err and not out.exists()


# ================================================================================ 4. meta checked first

@pytest.mark.parametrize("change, match", [
    ({"width": 12}, "width must be a number > 0 and <= 8"),
    ({"width": 4.0}, "do not fit"),
    ({"num_classes": 30_000_000}, "do not fit"),
    ("a string", "malformed meta: a str"),
    ({"options": [1, 2]}, "options"),
    ({"crf": {"w1": 4, "colour": 3}}, "unknown key.*colour"),
    ({"crf": "yes"}, "crf"),
])
def test_checkpoint_meta_is_checked_before_the_network_is_built(ckpt, change, match):
    state = load_checkpoint(ckpt)
    state["meta"] = change if isinstance(change, str) else {**state["meta"], **change}
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        load_model(state)
    assert time.perf_counter() - start < 10  # a width-4 or 3e7-class net would take minutes and many GB


# ================================================================================ 5. resume on the same data only

@pytest.mark.parametrize("flag, value, key", [("--size", "48", "data"), ("--n-train", "6", "train_items")])
def test_resume_on_other_data_is_refused(run_dir, capsys, flag, value, key):
    before = (run_dir / "last.pt").read_bytes()
    args = list(TINY)
    args[args.index(flag) + 1] = value
    assert main(["train", "--model", MODEL, *args, "--steps", "1", "--checkpoint-dir", str(run_dir), "--resume"]) == 2
    err = one_line(capsys, "train")
    assert f"trained on {key}=" in err and flag in err
    assert (run_dir / "last.pt").read_bytes() == before  # the meta is not rewritten


# ================================================================================ 6. one class-count check

def test_crf_search_and_eval_refuse_a_checkpoint_for_other_classes(ckpt, capsys):
    assert main(["crf-search", "--model", MODEL, "--checkpoint", str(ckpt), "--data", "synthetic", "--size", "32",
                 "--n-heldout", "1", "--device", "cpu", "--no-progress"]) == 2
    err = one_line(capsys, "crf-search")
    assert "predicts 21 classes" in err
    assert main(["eval", "--checkpoint", str(ckpt), "--data", "synthetic", "--size", "32", "--n-val", "1",
                 "--device", "cpu", "--no-progress"]) == 2
    assert one_line(capsys, "eval").split(": ", 1)[1] == err.split(": ", 1)[1]  # the same check, the same words


# ================================================================================ 7. archives

def _tar(path, members, mode="w"):
    with tarfile.open(path, mode) as tar:
        for name, kind, target, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if target:
                info.linkname = target
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_safe_extract_follows_symlink_chains(tmp_path):
    from dlcore.data.download import safe_extract

    dest = tmp_path / "a" / "b" / "dest"
    archive = _tar(tmp_path / "chain.tar", [("a", tarfile.SYMTYPE, ".", None), ("b", tarfile.SYMTYPE, "a/..", None),
                                            ("b/X", tarfile.REGTYPE, None, b"escaped")])
    with pytest.raises(ValueError, match="'b'"):
        safe_extract(archive, dest)
    assert not os.path.lexists(dest / "a") and not (dest.parent / "X").exists()  # nothing written
    archive = _tar(tmp_path / "through.tar", [("a", tarfile.SYMTYPE, ".", None), ("c", tarfile.SYMTYPE, "..", None),
                                              ("a/c/X", tarfile.REGTYPE, None, b"escaped")])
    with pytest.raises(ValueError, match="outside"):
        safe_extract(archive, dest)
    assert not (dest.parent / "X").exists()


@pytest.mark.parametrize("mode, suffix", [("w", ".tar"), ("w:gz", ".tar.gz")])
def test_truncated_archives_are_a_value_error(tmp_path, mode, suffix):
    from dlcore.data.download import safe_extract

    rng = np.random.default_rng(0)
    files = [(f"f{i}.bin", tarfile.REGTYPE, None, rng.bytes(20000)) for i in range(3)]
    whole = _tar(tmp_path / f"whole{suffix}", files, mode)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    with pytest.raises(ValueError, match="truncated or damaged.*download it again"):
        safe_extract(cut, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())  # every header is read before anything is written


# ================================================================================ 8. overlay opacity

@pytest.mark.parametrize("alpha", ["5", "nan", "-0.1"])
def test_alpha_outside_0_1_is_refused(tmp_path, ckpt, capsys, alpha):
    assert _segment(_photo(tmp_path / "a.png"), "--checkpoint", ckpt, "--out", tmp_path / "out",
                    "--alpha", alpha) == 2
    assert "--alpha must be an opacity in [0, 1]" in one_line(capsys, "segment")
    assert not (tmp_path / "out").exists()


# ================================================================================ unclear errors made clear

def test_dense_crf_shapes_and_dtypes(crf_inputs):
    with pytest.raises(ValueError, match="empty"):
        dense_crf(np.zeros((0, 0, 3), np.uint8), np.zeros((2, 0, 0), np.float32))
    image, probs = crf_inputs
    q = dense_crf(torch.from_numpy(image), torch.from_numpy(probs).bfloat16(), iterations=2)  # bf16 rounding accepted
    assert q.dtype == torch.bfloat16 and torch.isfinite(q).all()
    with pytest.raises(ValueError, match="sum to 1"):
        dense_crf(image, probs * 1.1)


def test_huge_image_is_refused_from_its_shape_alone():
    image = torch.zeros(1, 1, 3, dtype=torch.uint8).expand(20000, 20000, 3)  # no memory: stride-0 views
    probs = torch.full((1, 1, 1), 0.5).expand(2, 20000, 20000)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="lattice.*400000000 pixels"):
        dense_crf(image, probs, max_memory_bytes=2 ** 30)
    with pytest.raises(ValueError, match="lattice"):
        DenseCRF(max_memory_bytes=2 ** 30)(image.permute(2, 0, 1)[None], probs[None])
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize("width", [float("inf"), 1e6, float("nan"), 0, -1, True])
def test_build_model_refuses_impossible_widths(width):
    with pytest.raises(ValueError, match="width must be a number"):
        build_model(MODEL, width=width)


@pytest.mark.parametrize("name, x", [
    (MODEL, torch.zeros(1, 1, 16, 16)), (MODEL, torch.zeros(1, 4, 16, 16)),
    (MODEL, torch.zeros(1, 3, 16, 16, dtype=torch.uint8)), ("fcn8s", torch.zeros(3, 16, 16)),
])
def test_model_input_is_checked(name, x):
    with torch.device("meta"):
        model = build_model(name, width=W)
    with pytest.raises(ValueError, match=r"takes normalized RGB images float \[B,3,H,W\]"):
        model(x.to("meta"))


def test_segment_out_and_device_are_checked_before_the_model_loads(tmp_path, ckpt, capsys, monkeypatch):
    import dlcore.checkpoint

    def no_load(*a, **k):
        raise AssertionError("the checkpoint was read before the arguments were checked")

    monkeypatch.setattr(dlcore.checkpoint, "load_checkpoint", no_load)
    photo = _photo(tmp_path / "a.png")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out, match in ((a_file, "is a file"), (a_file / "sub", "under the file")):
        assert _segment(photo, "--checkpoint", ckpt, "--out", out) == 2
        assert match in one_line(capsys, "segment")
    assert _segment(photo, "--checkpoint", ckpt, "--out", tmp_path / "o", "--device", "tpu") == 2
    assert "unknown device 'tpu'" in one_line(capsys, "segment")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_segment_refuses_a_read_only_out(tmp_path, ckpt, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert _segment(_photo(tmp_path / "a.png"), "--checkpoint", ckpt, "--out", locked / "o") == 2
        assert "read-only" in one_line(capsys, "segment")
    finally:
        locked.chmod(0o700)


def test_eval_errors(run_dir, tmp_path, capsys):
    ck = str(run_dir / "last.pt")
    assert main(["eval", "--checkpoint", ck, "--device", "tpu", "--no-progress"]) == 2
    assert "unknown device 'tpu'" in one_line(capsys, "eval")
    assert main(["eval", "--checkpoint", ck, "--device", "cpu", "--n-val", "1", "--no-progress",
                 "--json", str(tmp_path)]) == 2
    assert "is a folder" in one_line(capsys, "eval")
    assert not list(tmp_path.glob(".*.tmp"))
    before = (run_dir / "last.pt").read_bytes()
    assert main(["eval", "--checkpoint", ck, "--device", "cpu", "--no-progress", "--json", ck]) == 2
    assert "is the checkpoint being evaluated" in one_line(capsys, "eval")
    assert (run_dir / "last.pt").read_bytes() == before


def test_eval_names_a_binary_split_list(ckpt, tmp_path, capsys):
    from dlcore.data.voc import write_voc_fixture

    voc = write_voc_fixture(tmp_path / "voc", n_train=1, n_val=1, size=32)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_bytes(b"\xff\xfe\x00\x81binary")
    assert main(["eval", "--checkpoint", str(ckpt), "--data", "voc", "--root", str(tmp_path / "voc"),
                 "--device", "cpu", "--no-progress"]) == 2
    err = one_line(capsys, "eval")
    assert "val.txt" in err and "not a text file" in err


def test_train_checks_its_checkpoint_dir_first(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["train", "--model", MODEL, *TINY, "--steps", "1", "--checkpoint-dir", str(a_file)]) == 2
    assert "is a file" in one_line(capsys, "train")


def test_train_is_seeded_and_cleans_stale_temporaries(tmp_path):
    stale = tmp_path / "a" / ".last.pt.4194305.tmp"  # above the largest pid Linux hands out: its writer is gone
    stale.parent.mkdir()
    stale.write_bytes(b"half a checkpoint")
    states = []
    for run, noise in (("a", 1), ("b", 2)):
        torch.manual_seed(noise)  # whatever the process did before, --seed decides the init
        assert main(["train", "--model", MODEL, *TINY, "--steps", "1", "--checkpoint-dir", str(tmp_path / run)]) == 0
        states.append(load_checkpoint(tmp_path / run / "last.pt")["model"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not stale.exists() and sorted(p.name for p in stale.parent.iterdir()) == ["last.pt"]


def test_train_names_a_bad_voc_label(tmp_path, capsys):
    from dlcore.data.palette import read_label_png, save_label_png
    from dlcore.data.voc import write_voc_fixture

    voc = write_voc_fixture(tmp_path / "voc", n_train=2, n_val=1, size=32)
    label = sorted((voc / "SegmentationClass").glob("2007_train_*.png"))[0]
    mask = read_label_png(label)
    mask[0, 0] = 37
    save_label_png(mask, label)
    assert main(["train", "--model", MODEL, "--data", "voc", "--root", str(tmp_path / "voc"), "--width", str(W),
                 "--crop", "32", "--steps", "1", "--batch-size", "2", "--num-workers", "0", "--device", "cpu",
                 "--no-progress", "--checkpoint-dir", str(tmp_path / "run")]) == 2
    err = one_line(capsys, "train")
    assert label.name in err and "37" in err


@pytest.mark.parametrize("flag, value, match", [
    ("--n-heldout", "0", "--n-heldout"), ("--sigma-alpha", "-1", "sigma_alpha"), ("--iterations", "-3", "iterations"),
    ("--device", "tpu", "unknown device"),
])
def test_crf_search_arguments(ckpt, capsys, flag, value, match):
    args = ["crf-search", "--model", MODEL, "--checkpoint", str(ckpt), "--data", "synthetic", "--size", "32",
            "--n-heldout", "1", "--device", "cpu", "--no-progress"]
    assert main(args + [flag, value]) == 2  # argparse: the last occurrence of a flag wins
    assert match in one_line(capsys, "crf-search")


def test_import_caffe_names_the_file_of_an_impossible_blob(tmp_path, capsys):
    from dlcore.caffe import proto as weights

    dims = weights._enc_varint(2 ** 32) * 2
    blob = weights._enc_len(7, weights._enc_len(1, dims))  # shape [2^32, 2^32], no data
    layer = weights._enc_len(1, b"conv1_1") + weights._enc_len(2, b"Convolution") + weights._enc_len(7, blob)
    path = tmp_path / "huge.caffemodel"
    path.write_bytes(weights._enc_len(100, layer))
    assert main(["import-caffe", str(path), "--model", MODEL, "--out", str(tmp_path / "o.pt")]) == 2
    err = one_line(capsys, "import-caffe")
    assert "huge.caffemodel" in err and "(4294967296, 4294967296)" in err


# ================================================================================ the convention itself

def test_debug_shows_the_traceback(tmp_path, ckpt):
    with pytest.raises(ValueError, match="--alpha"):
        _segment(_photo(tmp_path / "a.png"), "--checkpoint", ckpt, "--out", tmp_path / "o", "--alpha", "5", "--debug")


def test_atomic_write_cleans_only_stale_temporaries(tmp_path):
    from dlcore.io import atomic_write

    target = tmp_path / "x.json"
    dead, alive = tmp_path / ".x.json.4194305.tmp", tmp_path / f".x.json.{os.getppid()}.tmp"
    dead.write_text("left by a killed writer")
    alive.write_text("another process is writing")
    atomic_write(target, lambda f: f.write(b"{}"))
    assert target.read_bytes() == b"{}" and not dead.exists() and alive.exists()
    with pytest.raises(ValueError, match="is a folder"):
        atomic_write(tmp_path, lambda f: f.write(b"x"))
    with pytest.raises(ZeroDivisionError):  # a failing writer leaves the old file and no temporary
        atomic_write(target, lambda f: (f.write(b"half"), 1 / 0))
    assert target.read_bytes() == b"{}" and sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "x.json"]


# ================================================================================ the re-run: new bad inputs
# Found by re-running issue 15's cases and ~90 new ones (the report of branch `reliab`). Fixed here: the
# pydensecrf front door (dlcore.crf.compat) and read_image; then the zoo's command and loader, seed_everything,
# resolve_device, eval --size, a checkpoint folder and figures --only (each first an xfail(strict) test).

def _compat_crf(H=12, W=14, L=3):
    import dlcore.crf.compat as dcrf

    rng = np.random.default_rng(0)
    probs = rng.random((L, H, W)).astype(np.float32)
    d = dcrf.DenseCRF2D(W, H, L)
    d.setUnaryEnergy(dcrf.unary_from_softmax(probs / probs.sum(0)))
    return d, rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.mark.parametrize("add, match", [
    # an all-NaN Q before, as dense_crf gave for the same widths and weights (issue 15, failure 3)
    (lambda d, im: d.addPairwiseGaussian(sxy=1e-30, compat=3), "sxy = 1e-30 is below 1e-06"),
    (lambda d, im: d.addPairwiseBilateral(sxy=80, srgb=(13, 1e-20, 13), rgbim=im, compat=10), "srgb = 1e-20"),
    (lambda d, im: d.addPairwiseGaussian(sxy=3, compat=1e39), r"\|compat\| <= 1e\+12"),
    (lambda d, im: d.addPairwiseGaussian(sxy=3, compat=np.full((3, 3), 1e20, np.float32)), "entries up to 1e\\+20"),
])
def test_compat_refuses_widths_and_weights_that_overflow(add, match):
    d, image = _compat_crf()
    with pytest.raises(ValueError, match=match):
        add(d, image)


def test_compat_never_returns_a_non_finite_q():
    d, _ = _compat_crf()
    features = np.random.default_rng(1).random((2, 12 * 14)).astype(np.float32) * 1e30  # finite, but overflows
    d.addPairwiseEnergy(features, compat=3)
    with pytest.raises(FloatingPointError, match="inference: the CRF produced NaN"):
        d.inference(3)
    Q, _, _ = d.startInference()
    with pytest.raises(FloatingPointError, match="stepInference"):
        d.stepInference(Q)


@pytest.mark.parametrize("sm, match", [
    (lambda p: np.log(p), r"values in \[-"),  # logits: were clipped into [1e-5, 1] and gave a wrong unary
    (lambda p: 3 * p, "probabilities in \\[0, 1\\]"),
    (lambda p: np.where(p > 0.5, np.nan, p), "NaN"),
])
def test_unary_from_softmax_refuses_what_is_not_a_probability(sm, match):
    import dlcore.crf.compat as dcrf

    probs = np.random.default_rng(0).dirichlet(np.ones(3), (4, 5)).transpose(2, 0, 1)
    with pytest.raises(ValueError, match=match) as err:
        dcrf.unary_from_softmax(sm(probs))
    assert "softmax" in str(err.value)
    dcrf.unary_from_softmax(np.float16(probs))  # a float16 softmax's rounding is accepted


@pytest.mark.parametrize("call, match", [
    (lambda m, im: m.create_pairwise_bilateral((80, 80), (13, 13, 13), im, chdim=5), "chdim must be the channel axis"),
    (lambda m, im: m.create_pairwise_bilateral((80, 80), (13, 13, 13), im), "needs chdim=2"),  # chdim -1: no channels
    (lambda m, im: m.create_pairwise_bilateral((80, 80), (13, 13), im, chdim=2), "one per channel \\(3\\)"),
    (lambda m, im: m.create_pairwise_gaussian((3,), (12, 14)), "one width per axis"),
])
def test_compat_feature_helpers_check_their_axes(call, match):
    import dlcore.crf.compat as dcrf

    _, image = _compat_crf()
    with pytest.raises(ValueError, match=match):  # numpy's AxisError, or silently undivided coordinates, before
        call(dcrf, image)


def test_read_image_names_folders_arrays_and_unreadable_files(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    from dlcore.data import read_image

    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ValueError, match="dir.png is a folder, not an image file"):  # was: "does not exist"
        read_image(tmp_path / "dir.png")
    with pytest.raises(TypeError, match="takes the path of an image file.*got ndarray"):  # was: pathlib's TypeError
        read_image(np.zeros((4, 4, 3), np.uint8))
    photo = _photo(tmp_path / "secret.png")

    def denied(*a, **k):  # what Image.open raises for a file without read permission (root reads anything)
        raise PermissionError(13, "Permission denied", str(photo))

    monkeypatch.setattr(PILImage, "open", denied)
    with pytest.raises(ValueError, match="secret.png: permission denied") as err:  # was: "a complete JPEG/PNG file?"
        read_image(photo)
    assert "JPEG/PNG" not in str(err.value)


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, "--n-train / --n-val"), ({"n": "abc"}, "number of scenes"), ({"n": None}, "number of scenes"),
    ({"size": "big"}, "--size"), ({"size": 16.7}, "of ints"), ({"seed": "x"}, "--seed"),
])
def test_synthetic_scenes_name_the_flag_of_a_bad_argument(kwargs, match):
    from dlcore.data import SyntheticScenes

    with pytest.raises(ValueError, match=match):  # was "n (number of scenes)" for --n-val 0, int()'s words for "abc"
        SyntheticScenes("train", **kwargs)


def test_train_and_eval_name_n_train_and_n_val(run_dir, capsys):
    assert main(["train", "--model", MODEL, *TINY[:4], "--n-train", "0", *TINY[6:], "--steps", "1",
                 "--checkpoint-dir", str(run_dir / "other")]) == 2
    assert "--n-train / --n-val" in one_line(capsys, "train")
    assert main(["eval", "--checkpoint", str(run_dir / "last.pt"), "--device", "cpu", "--n-val", "0",
                 "--no-progress"]) == 2
    assert "--n-train / --n-val" in one_line(capsys, "eval")


# ---- the CLI (dlcore/cli/eval.py, checkpoint.py, cli/figures.py) ------------------------------------------------

def test_eval_refuses_size_0(run_dir, capsys):
    assert main(["eval", "--checkpoint", str(run_dir / "last.pt"), "--device", "cpu", "--n-val", "1", "--size", "0",
                 "--no-progress"]) == 2
    assert "--size" in one_line(capsys, "eval")


def test_a_checkpoint_that_is_a_folder_is_named(run_dir):
    with pytest.raises(ValueError, match="is a folder.*last.pt"):
        load_checkpoint(run_dir)


def test_figures_only_names_an_unknown_notebook(capsys):
    assert main(["figures", "--only", "99"]) == 2
    assert "'99'" in one_line(capsys, "figures")


# ---- the zoo (dlcore/zoo.py: the lead's) -------------------------------------------------------------------------

@pytest.fixture
def damaged_zoo(tmp_path):
    """A zoo folder whose manifest.json is cut mid-way, beside an intact (stand-in) pre-trained file."""
    zoo_dir = tmp_path / "zoo"
    zoo_dir.mkdir()
    (zoo_dir / "manifest.json").write_text('{"format": "dlcore-zoo", "entries": {')
    (zoo_dir / "pretrain-vgg16.pt").write_bytes(b"the intact pre-trained trunk")
    return zoo_dir


def _no_training(monkeypatch):
    from dlcore import zoo

    def trained(*a, **k):
        raise AssertionError("zoo train started training before it checked its inputs")

    for fn in ("train_pretrained", "train_model"):
        monkeypatch.setattr(zoo.training, fn, trained)


def test_zoo_list_names_a_damaged_manifest(damaged_zoo, capsys):
    assert main(["zoo", "list", "--zoo-dir", str(damaged_zoo)]) == 2
    assert "manifest.json is not valid JSON" in one_line(capsys, "zoo")


def test_zoo_train_with_a_damaged_manifest_trains_and_overwrites_nothing(damaged_zoo, capsys, monkeypatch):
    _no_training(monkeypatch)
    assert main(["zoo", "train", "--only", "fcn32s", "--zoo-dir", str(damaged_zoo)]) == 2
    assert "manifest.json" in one_line(capsys, "zoo")
    assert (damaged_zoo / "pretrain-vgg16.pt").read_bytes() == b"the intact pre-trained trunk"


def test_zoo_train_checks_its_zoo_dir_before_training(tmp_path, capsys, monkeypatch):
    _no_training(monkeypatch)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["zoo", "train", "--only", "fcn32s", "--zoo-dir", str(a_file)]) == 2
    assert "is a file" in one_line(capsys, "zoo")


@pytest.mark.parametrize("kind", ["file", "missing"])
def test_zoo_list_refuses_a_zoo_dir_that_is_not_a_folder(tmp_path, capsys, kind):
    zoo_dir = tmp_path / "zoo_typo"
    if kind == "file":
        zoo_dir.write_text("x")
    assert main(["zoo", "list", "--zoo-dir", str(zoo_dir)]) == 2
    assert "zoo_typo" in one_line(capsys, "zoo")


def test_zoo_list_names_a_manifest_entry_without_its_checksum(tmp_path, capsys):
    (tmp_path / "fcn8s-s0.pt").write_bytes(b"weights")
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "dlcore-zoo", "version": 1, "crf": {},
                                                         "entries": {"fcn8s-s0": {"file": "fcn8s-s0.pt"}}}))
    assert main(["zoo", "list", "--zoo-dir", str(tmp_path)]) == 2
    err = one_line(capsys, "zoo")
    assert "fcn8s-s0" in err and "sha256" in err


def test_zoo_train_refuses_an_unknown_device(tmp_path, capsys, monkeypatch):
    from dlcore.zoo import training as zoo_training

    monkeypatch.setattr(zoo_training, "train_all", lambda *a, **k: pytest.fail("trained with device 'tpu'"))
    assert main(["zoo", "train", "--only", "fcn32s", "--zoo-dir", str(tmp_path / "z"), "--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in one_line(capsys, "zoo")


@pytest.mark.parametrize("seed", [True, 1.0])
def test_zoo_load_refuses_seeds_that_are_not_integers(seed):
    from dlcore import zoo

    with pytest.raises(ValueError, match="the zoo has seeds"):
        zoo.load("fcn8s", seed=seed)


@pytest.mark.parametrize("kind", ["file", "missing"])
def test_zoo_load_names_a_zoo_dir_that_is_not_a_folder(tmp_path, kind):
    from dlcore import zoo

    zoo_dir = tmp_path / "zoo_typo"
    if kind == "file":
        zoo_dir.write_text("x")
    with pytest.raises(ValueError, match="zoo_typo.*(does not exist|not a folder)"):
        zoo.load("fcn8s", zoo_dir=zoo_dir)


# ---- what the notebooks' first cell calls (dlcore/__init__.py) ----------------------------------------------------

@pytest.mark.parametrize("seed", ["zero", -1, 1.5])
def test_seed_everything_names_a_bad_seed(seed):
    import dlcore

    with pytest.raises(ValueError, match="seed must be an integer in 0..2\\*\\*32 - 1"):
        dlcore.seed_everything(seed)


def test_resolve_device_names_an_unknown_device():
    import dlcore

    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        dlcore.resolve_device("tpu")


def test_every_test_the_reliability_doc_names_exists():
    """docs/reliability.md's tables name the test of each case; a renamed or deleted test must not leave it stale."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "reliability.md").read_text()
    # `test_x` is in tests/test_reliability.py, `tests/test_y.py::test_x` in test_y.py, and a following
    # `::test_z` in the same file as the one before it
    named = re.findall(r"`(tests/test_\w+\.py)?(::)?(test_\w+)`", doc)
    assert len(named) > 40, named
    file = "tests/test_reliability.py"
    for path, continued, test in named:
        file = path or (file if continued else "tests/test_reliability.py")
        source = (root / file).read_text()
        assert re.search(rf"^def {test}\(", source, re.M), f"docs/reliability.md names {file}::{test}: not there"


# ================================================================================ issue 23: nothing overwritten
# A new bad-input run: outputs replaced files nobody named, special files and write-protected files; damaged
# files were loaded. Each test below failed before its fix.

def test_segment_never_replaces_a_file_it_was_not_given(tmp_path, ckpt, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos / "a.jpg")
    other = _photo(photos / "a.png", seed=1).read_bytes()  # a different photo, not an input of this run
    assert _segment(photos / "a.jpg", "--checkpoint", ckpt, "--out", photos) == 2
    err = one_line(capsys, "segment")
    assert "a.png already exists" in err and "--overwrite" in err
    assert (photos / "a.png").read_bytes() == other and not (photos / "a_overlay.jpg").exists()
    out = tmp_path / "out"
    assert _segment(photos / "a.jpg", "--checkpoint", ckpt, "--out", out) == 0
    assert _segment(photos / "a.jpg", "--checkpoint", ckpt, "--out", out) == 2  # a second run: asked, not assumed
    assert "already exists" in one_line(capsys, "segment")
    assert _segment(photos / "a.jpg", "--checkpoint", ckpt, "--out", out, "--overwrite") == 0


def test_eval_and_import_caffe_replace_only_with_overwrite(run_dir, tmp_path, capsys, monkeypatch):
    import dlcore.cli.eval

    monkeypatch.setattr(dlcore.cli.eval, "evaluate", lambda *a, **k: pytest.fail("evaluated before the check"))
    scores = tmp_path / "scores.json"
    scores.write_text("yesterday's scores")
    assert main(["eval", "--checkpoint", str(run_dir / "last.pt"), "--device", "cpu", "--no-progress",
                 "--json", str(scores)]) == 2
    assert "scores.json already exists; pass --overwrite" in one_line(capsys, "eval")
    model_file, out = tmp_path / "m.caffemodel", tmp_path / "m.pt"
    model_file.write_bytes(b"weights")
    out.write_bytes(b"an earlier import")
    assert main(["import-caffe", str(model_file), "--model", MODEL, "--out", str(out)]) == 2
    assert "m.pt already exists" in one_line(capsys, "import-caffe")
    assert scores.read_text() == "yesterday's scores" and out.read_bytes() == b"an earlier import"


def test_outputs_write_through_devices_and_fifos(tmp_path, run_dir):
    import threading

    from dlcore.io import atomic_write_bytes

    device = tmp_path / "null"  # a null device of our own: a failing run must not replace the system's /dev/null
    try:
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:  # not root: /dev/null itself is safe, /dev cannot be written
        device = os.devnull
    assert main(["eval", "--checkpoint", str(run_dir / "last.pt"), "--device", "cpu", "--no-progress",
                 "--n-val", "1", "--json", str(device)]) == 0
    assert os.path.exists(device) and not os.path.isfile(device)  # still the device, not a file
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)  # daemon: never hangs
    reader.start()
    atomic_write_bytes(fifo, b"through the pipe")
    reader.join(10)
    assert got == [b"through the pipe"] and not fifo.is_file() and not list(tmp_path.glob(".*.tmp"))
    target, link = tmp_path / "scores.json", tmp_path / "latest.json"
    target.write_text("{}")
    link.symlink_to(target.name)
    atomic_write_bytes(link, b"[]")  # as a redirect: through the link, which stays a link
    assert link.is_symlink() and target.read_bytes() == b"[]"


def test_write_protected_files_are_respected(tmp_path, monkeypatch):
    from dlcore.io import atomic_write_bytes

    kept = tmp_path / "shared.json"
    kept.write_text("{}")
    kept.chmod(0o640)
    atomic_write_bytes(kept, b"[]")
    assert kept.read_bytes() == b"[]" and (kept.stat().st_mode & 0o777) == 0o640  # a replaced file keeps its mode
    locked = tmp_path / "ro.json"
    locked.write_text("{}")
    locked.chmod(0o444)
    real_access = os.access  # what the kernel answers a user without override rights (these tests may run as root)
    monkeypatch.setattr(os, "access",
                        lambda p, m: False if str(p) == str(locked) and m & os.W_OK else real_access(p, m))
    with pytest.raises(ValueError, match="ro.json is write-protected \\(mode 444\\)"):
        atomic_write_bytes(locked, b"[]")
    assert locked.read_text() == "{}" and (locked.stat().st_mode & 0o777) == 0o444


def test_an_output_name_the_file_system_cannot_take_is_refused_before_the_work(run_dir, tmp_path, capsys,
                                                                              monkeypatch):
    import dlcore.cli.eval

    monkeypatch.setattr(dlcore.cli.eval, "evaluate", lambda *a, **k: pytest.fail("evaluated before the check"))
    for json_path in (tmp_path / ("s" * 250 + ".json"), tmp_path / "new" / ("s" * 250 + ".json")):
        assert main(["eval", "--checkpoint", str(run_dir / "last.pt"), "--device", "cpu", "--no-progress",
                     "--json", str(json_path)]) == 2
        assert "name" in one_line(capsys, "eval")  # the temporary `.NAME.PID.tmp` would not fit either
    photo = _photo(tmp_path / ("p" * 250 + ".png"))
    assert _segment(photo, "--checkpoint", run_dir / "last.pt", "--out", tmp_path / "o") == 2
    assert "bytes the file system takes" in one_line(capsys, "segment") and not (tmp_path / "o").exists()


def test_a_second_train_run_on_one_checkpoint_dir_is_refused(tmp_path, capsys):
    from dlcore.io import lock_folder

    run = tmp_path / "run"
    args = ["train", "--model", MODEL, *TINY, "--steps", "1", "--checkpoint-dir", str(run)]
    with lock_folder(run, "checkpoint_dir"):  # a first run in progress (the lock is per open file, so this holds)
        assert main(args) == 2
        err = one_line(capsys, "train")
        assert f"in use by another run (pid {os.getpid()})" in err and not (run / "last.pt").exists()
    assert main(args) == 0  # released: the next run proceeds, and leaves no lock file behind
    assert sorted(p.name for p in run.iterdir()) == ["last.pt"]


def test_ctrl_c_before_the_first_checkpoint_does_not_send_to_resume(tmp_path, capsys, monkeypatch):
    import dlcore.cli.train

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(dlcore.cli.train, "train", interrupted)
    assert main(["train", "--model", MODEL, *TINY, "--steps", "1", "--checkpoint-dir", str(tmp_path / "r")]) == 130
    err = one_line(capsys, "train")
    assert "before its first checkpoint" in err and "without --resume" in err


def test_figures_smoke_writes_under_build_not_over_the_shipped_figures(monkeypatch, capsys):
    from pathlib import Path

    from dlcore import figures

    written = []
    monkeypatch.setattr(figures, "_run_checked", lambda path, out, fig_dir, *a: written.append(Path(fig_dir))
                        or figures.Result(path.name, 0.0))
    monkeypatch.setattr(figures, "_write_times", lambda *a: None)
    assert main(["figures", "--smoke", "--only", "00", "--jobs", "1"]) == 0
    assert written == [figures.ROOT / "build" / "smoke-figures"]  # was figures/, the committed full-run figures
    assert "build/smoke-figures" in capsys.readouterr().out


def test_a_relative_fig_dir_is_the_notebooks_not_the_working_folders(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dlcore import viz

    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    monkeypatch.setattr(viz, "NOTEBOOKS_DIR", repo / "notebooks")
    monkeypatch.chdir(repo)  # papermill started from the repository root
    fig = plt.figure(figsize=(1, 1))
    path = viz.savefig(fig, "t", "../figures")  # the notebooks' FIG_DIR
    plt.close(fig)
    assert path == repo / "figures" / "t.png" and path.is_file() and not (tmp_path / "figures").exists()


def _zip(path, members, deflate=False):
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as z:
        for name, data in members:
            z.writestr(name, data)
    return path


def test_a_damaged_zip_leaves_the_files_already_there(tmp_path):
    from dlcore.data.download import safe_extract

    archive = _zip(tmp_path / "labels.zip", [("one.png", b"first member"), ("two.png", b"second member")])
    data = bytearray(archive.read_bytes())
    data[data.index(b"second member")] ^= 0x01  # stored: the second member's bytes, which now fail its CRC-32
    archive.write_bytes(bytes(data))
    out = tmp_path / "out"
    out.mkdir()
    (out / "two.png").write_bytes(b"the good copy from last time")
    with pytest.raises(ValueError, match="labels.zip is truncated or damaged"):
        safe_extract(archive, out)
    assert sorted(p.name for p in out.iterdir()) == ["two.png"]  # no one.png, no temporary folder
    assert (out / "two.png").read_bytes() == b"the good copy from last time"


def test_archives_are_capped_by_size_and_ratio(tmp_path):
    from dlcore.data.download import safe_extract

    zeros = bytes(20 << 20)  # 20 MiB that deflate to ~20 KB
    for archive in (_zip(tmp_path / "bomb.zip", [("x.bin", zeros)], deflate=True),
                    _tar(tmp_path / "bomb.tar.gz", [("x.bin", tarfile.REGTYPE, None, zeros)], "w:gz")):
        with pytest.raises(ValueError, match="decompression bomb"):
            safe_extract(archive, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_a_member_under_a_file_member_is_named_before_anything_is_written(tmp_path):
    from dlcore.data.download import safe_extract

    members = [("first", tarfile.REGTYPE, None, b"1"), ("a", tarfile.REGTYPE, None, b"x"),
               ("a/b", tarfile.REGTYPE, None, b"y")]
    for archive in (_tar(tmp_path / "a.tar", members),
                    _zip(tmp_path / "a.zip", [("first", b"1"), ("a", b"x"), ("a/b", b"y")])):
        with pytest.raises(ValueError, match=f"{archive.name}: member 'a/b' lies under the file member 'a'"):
            safe_extract(archive, tmp_path / "out")
        assert not any((tmp_path / "out").iterdir())


def test_a_flipped_bit_in_a_checkpoint_is_detected(tmp_path, capsys):
    model = build_model(MODEL, width=W)
    state = model.state_dict()
    state["head.fc8.bias"].fill_(0.123456)  # a value to find in the file
    path = save_checkpoint(tmp_path / "m.pt", model=state, step=0, meta=checkpoint_meta(model))
    data = bytearray(path.read_bytes())
    data[data.index(np.float32(0.123456).tobytes()) + 3] ^= 0x10  # one exponent bit: still finite, far from 0.12
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="m.pt is not a readable dlcore checkpoint.*fails its CRC-32 check"):
        load_checkpoint(path)
    assert _segment(_photo(tmp_path / "a.png"), "--checkpoint", path, "--out", tmp_path / "out") == 2
    assert "CRC-32" in one_line(capsys, "segment") and not (tmp_path / "out").exists()


@pytest.mark.parametrize("payload, match", [
    ("pickle", "pickled Python objects other than tensors"), ("text", "not a file torch.save writes"),
])
def test_train_weights_that_are_not_weights_are_named(tmp_path, capsys, payload, match):
    weights = tmp_path / "w.pt"
    if payload == "pickle":
        torch.save({"features.0.weight": torch.zeros(1), "hook": _Payload()}, weights)
    else:
        weights.write_text("root:x:0:0:root:/root:/bin/bash\n")  # /etc/passwd: was "list index out of range"
    assert main(["train", "--model", MODEL, *TINY[2:], "--width", "1", "--steps", "1",
                 "--weights", str(weights), "--checkpoint-dir", str(tmp_path / "run")]) == 2
    err = one_line(capsys, "train")
    assert "w.pt is not a readable weights file" in err and match in err and "weights_only=False" not in err


class _Payload:
    def __reduce__(self):  # what a hostile file holds: a call that would run on an unguarded load
        return (os.system, ("echo this must not run",))


def test_scores_that_overflow_are_named_not_segmented_as_background(tmp_path, capsys):
    model = build_model(MODEL, width=W)
    state = model.state_dict()
    state["backbone.features.0.weight"][0, 0, 0, 0] = 3e38  # finite, so the load-time check passes; it overflows
    ck = save_checkpoint(tmp_path / "big.pt", model=state, step=0, meta=checkpoint_meta(model))
    photo = _photo(tmp_path / "a.png")
    for crf in ([], ["--crf"]):  # exit 0 and all class 0 before; with --crf: "pass softmax probabilities, not logits"
        assert _segment(photo, "--checkpoint", ck, "--out", tmp_path / "out", *crf) == 2
        err = one_line(capsys, "segment")
        assert "NaN or Inf" in err and "backbone.features.0" in err and "3e+38" in err and "logits" not in err
        assert not any((tmp_path / "out").iterdir())


def test_32_bit_integer_images_are_refused_whatever_their_values(tmp_path, ckpt, capsys):
    from dlcore.data import read_image

    grey = np.arange(16 * 20, dtype=np.int32).reshape(16, 20) % 256
    Image.fromarray(grey).save(tmp_path / "int32.tif")  # 0..255 in 32 bits: was read as 16-bit, pixels 0..1
    with pytest.raises(ValueError, match="int32.tif holds 32-bit integer pixels"):
        read_image(tmp_path / "int32.tif")
    assert _segment(tmp_path / "int32.tif", "--checkpoint", ckpt, "--out", tmp_path / "out") == 2
    assert "32-bit" in one_line(capsys, "segment") and not (tmp_path / "out").exists()
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "deep.pgm")  # 16-bit PGM: PIL's mode "I" too
    assert int(read_image(tmp_path / "deep.pgm").max()) == 255


def test_compat_bounds_its_memory_up_front(monkeypatch):
    import dlcore.crf.compat as dcrf
    import dlcore.crf.lattice

    monkeypatch.setattr(dlcore.crf.lattice, "available_memory_bytes", lambda device: 8 << 30)  # an 8 GB laptop
    start = time.perf_counter()
    for W, H, L in ((1500, 1500, 255), (6000, 6000, 2)):  # ~30 GB at inference; a 10 GB lattice
        with pytest.raises(ValueError, match=f"DenseCRF2D\\(W={W}, H={H}, L={L}\\).*GiB"):
            dcrf.DenseCRF2D(W, H, L)
    d = dcrf.DenseCRF(400 * 400, 2000)  # the generic class: checked when a kernel is added, with its own D
    with pytest.raises(ValueError, match="3-D kernel on DenseCRF\\(N=160000, L=2000\\).*GiB"):
        d.addPairwiseEnergy(np.zeros((3, 400 * 400), np.float32), compat=3)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("call, match", [
    (lambda m, p: dense_crf(np.zeros((4, 5, 3), np.uint8), p.tolist()), "probs must be a numpy"),  # AttributeError
    (lambda m, p: m.unary_from_labels(np.zeros((4, 5), np.int64), 1, 0.7, zero_unsure=False), "n_labels"),  # 1 / 0
    (lambda m, p: m.unary_from_softmax(p, scale="x"), "scale"),  # TypeError: '<' between str and int
    (lambda m, p: m.unary_from_softmax(p, clip="x"), "clip"),
    (lambda m, p: m.unary_from_labels(np.zeros((4, 5), np.int64), 3, "0.7"), "gt_prob"),
])
def test_small_crf_api_errors_name_the_argument(call, match):
    import dlcore.crf.compat as dcrf

    probs = np.full((2, 4, 5), 0.5, np.float32)
    with pytest.raises(ValueError, match=match):
        call(dcrf, probs)


def test_segment_estimates_its_memory_before_decoding(tmp_path, ckpt, capsys, monkeypatch):
    import dlcore.crf.lattice

    monkeypatch.setattr(dlcore.crf.lattice, "available_memory_bytes", lambda device: 4 << 30)
    big = _png_claiming(tmp_path / "big.png", 13000, 13000)  # under PIL's bomb limit: it peaked at 9.3 GB
    start = time.perf_counter()
    assert _segment(_photo(tmp_path / "a.png"), big, "--checkpoint", ckpt, "--out", tmp_path / "out") == 2
    err = one_line(capsys, "segment")
    assert "big.png (13000 x 13000 pixels" in err and "GiB, more than the 4.0 GiB available" in err
    assert time.perf_counter() - start < 10 and not (tmp_path / "out").exists()
    assert _segment(_photo(tmp_path / "a.png"), "--checkpoint", ckpt, "--out", tmp_path / "out", "--max-side",
                    "4096", "--crf") == 0  # a small photo: --max-side does not resize it, and it fits


def test_a_1_x_1_image_segments_without_a_warning(tmp_path, ckpt, capsys):
    import warnings

    photo = _photo(tmp_path / "dot.png", size=(1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # was torch's "The given NumPy array is not writable"
        assert _segment(photo, "--checkpoint", ckpt, "--out", tmp_path / "out") == 0
    assert "Warning" not in capsys.readouterr().err


@pytest.mark.parametrize("command, flag, value", [
    ("train", "--size", "20000"), ("train", "--crop", "20000"), ("train", "--batch-size", "0"),
    ("train", "--lr", "inf"),
    ("train", "--seed", "-1"), ("train", "--checkpoint-every", "-5"), ("eval", "--scales", "200"),
    ("segment", "--max-side", "100000"),
    ("crf-search", "--size", "20000"), ("import-caffe", "--num-classes", "0"),
])
def test_numeric_flags_are_range_checked_by_name(run_dir, tmp_path, capsys, monkeypatch, command, flag, value):
    import importlib

    def too_late(*a, **k):  # past the flag checks: a missing check must fail here, not allocate 10 GB
        raise AssertionError(f"{flag} {value} was not checked before the work started")

    module = importlib.import_module(f"dlcore.cli.{command.replace('-', '_')}")
    monkeypatch.setattr(module, {"train": "open_dataset", "eval": "load_checkpoint", "segment": "collect_images",
                                 "crf-search": "open_dataset", "import-caffe": "check_output_file"}[command], too_late)
    ck = str(run_dir / "last.pt")
    base = {"train": ["train", "--model", MODEL, *TINY, "--steps", "1", "--checkpoint-dir", str(tmp_path / "r")],
            "eval": ["eval", "--checkpoint", ck, "--device", "cpu", "--no-progress"],
            "segment": ["segment", str(_photo(tmp_path / "a.png")), "--checkpoint", ck, "--out", str(tmp_path / "o")],
            "crf-search": ["crf-search", "--model", MODEL, "--checkpoint", ck, "--data", "synthetic",
                           "--device", "cpu"],
            "import-caffe": ["import-caffe", ck, "--model", MODEL, "--out", str(tmp_path / "m.pt")]}[command]
    start = time.perf_counter()
    assert main(base + [flag, value]) == 2  # argparse: the last occurrence of a flag wins
    err = one_line(capsys, command)
    assert f"{flag} must be" in err and time.perf_counter() - start < 10


@pytest.mark.parametrize("command", ["train", "eval", "crf-search"])
def test_train_eval_and_crf_search_estimate_their_memory_first(run_dir, tmp_path, capsys, monkeypatch, command):
    import dlcore.crf.lattice

    monkeypatch.setattr(dlcore.crf.lattice, "available_memory_bytes", lambda device: 64 << 20)  # 64 MiB free
    if command == "train":  # allowed sizes, too much for the memory: the estimate names the flags to lower
        args = ["train", "--model", MODEL, *TINY, "--steps", "1", "--size", "1024", "--checkpoint-dir",
                str(tmp_path / "r")]
    elif command == "eval":
        args = ["eval", "--checkpoint", str(run_dir / "last.pt"), "--device", "cpu", "--no-progress", "--n-val", "1",
                "--scales", "4", "--size", "256"]
    else:
        args = ["crf-search", "--model", MODEL, "--checkpoint", str(run_dir / "last.pt"), "--data", "synthetic",
                "--size", "1024", "--n-heldout", "1", "--device", "cpu", "--no-progress"]
    assert main(args) == 2
    err = one_line(capsys, command)
    assert "GiB, more than the 0.1 GiB available" in err and "lower --" in err
    assert not (tmp_path / "r" / "last.pt").exists()


def test_the_zoo_folders_of_a_notebook_are_the_notebooks_too(tmp_path, monkeypatch):
    """ZOO_DIR = "../zoo" and RETRAIN_DIR = "../build/zoo" mean the repository's, wherever papermill was started."""
    from dlcore import viz, zoo

    monkeypatch.chdir(tmp_path)
    assert zoo.for_notebook([], smoke=False, retrain=False, zoo_dir="../zoo", retrain_dir="../build/zoo") == \
        viz.NOTEBOOKS_DIR.parent / "zoo"


def test_a_notebook_parameter_out_of_range_is_named():
    import dlcore

    dlcore.check_parameters({"SMOKE": True, "SEED": 0, "DEVICE": "auto", "DENSE_SIZE": 128, "RATES": [1, 2, 4]})
    for bad in ({"SMOKE_DENSE_SIZE": -5}, {"RATES": [1, 0, 4]}, {"LR": 0.0}):
        with pytest.raises(ValueError, match=f"notebook parameter {next(iter(bad))} = .*positive"):
            dlcore.check_parameters({"SMOKE": False, **bad})


def test_ctrl_c_during_zoo_train_is_one_line_naming_how_to_continue(tmp_path, capsys, monkeypatch):
    from dlcore.zoo import training as zoo_training

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo_training, "train_all", interrupted)
    assert main(["zoo", "train", "--schedule", "tiny", "--zoo-dir", str(tmp_path / "z")]) == 130
    out = capsys.readouterr()
    assert "Traceback" not in out.err and len(out.out.strip().splitlines()) == 1
    assert "interrupted" in out.out and "same command again" in out.out and "zoo list" in out.out


def test_a_smoke_runs_tiny_zoo_goes_with_its_kernel(tmp_path):
    """The tiny zoo a notebook's smoke run trains lives in a temporary folder that its process removes at exit."""
    import subprocess
    import sys

    code = ("from dlcore import zoo\n"
            "d = zoo.for_notebook(['fcn32s'], smoke=True, retrain=False, zoo_dir='../zoo', retrain_dir='../build/zoo')\n"
            "assert (d / 'fcn32s-s0.pt').is_file()\nprint(d)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-1500:]
    folder = run.stdout.strip().splitlines()[-1]
    assert "dlcore-zoo-smoke-" in folder and not os.path.exists(folder)
