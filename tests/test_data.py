"""dlcore.data: SyntheticScenes, VOCSegmentation on a fixture written here, transforms, palette, download safety."""

import io
import os
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from dlcore import metrics
from dlcore.data import SyntheticScenes, VOCSegmentation, read_image
from dlcore.data import download, palette, synthetic
from dlcore.data.transforms import CAFFE_MEAN_BGR, MEAN_RGB_UINT8, normalize, train_transform


@pytest.fixture(scope="module")
def pool():
    """300 val scenes at 64 x 64 (images, labels, instances), shared by the distribution tests."""
    ds = SyntheticScenes("val", n=300, size=64, seed=0)
    scenes = [ds.scene(i) for i in range(len(ds))]
    return ds, scenes


# ------------------------------------------------------------------ SyntheticScenes: format and determinism
def test_item_format_and_repr():
    ds = SyntheticScenes("train", n=5)
    image, mask = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 128, 128)
    assert mask.dtype == torch.int64 and mask.shape == (128, 128)
    assert len(ds) == 5 and ds.num_classes == len(ds.class_names) >= 9 and ds.class_names[0] == "background"
    labels = set(mask.unique().tolist())
    assert labels <= set(range(ds.num_classes)) | {255} and 255 in labels
    assert "SyntheticScenes(split='train', n=5, size=128" in repr(ds)
    assert torch.equal(ds[-1][1], ds[4][1])
    with pytest.raises(IndexError):
        ds[5]


def test_deterministic_and_splits_differ():
    a, b = SyntheticScenes("train", n=4, seed=0), SyntheticScenes("train", n=4, seed=0)
    for i in range(4):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
        assert torch.equal(a.instances(i), b.instances(i))
    assert torch.equal(a[2][0], a[2][0])  # random access gives the same scene again
    other_seed = SyntheticScenes("train", n=4, seed=1)
    val = SyntheticScenes("val", n=4, seed=0)
    for i in range(4):
        assert not torch.equal(a[i][0], other_seed[i][0])
        assert not torch.equal(a[i][0], val[i][0])
    # scenes are not shifted copies of each other across the splits either
    train_images = {SyntheticScenes("train", n=30, size=32)[i][0].numpy().tobytes() for i in range(30)}
    val_images = {SyntheticScenes("val", n=30, size=32)[i][0].numpy().tobytes() for i in range(30)}
    assert not train_images & val_images and len(train_images) == 30


@pytest.mark.parametrize("size", [16, 32, 64, 96, (100, 70)])
def test_any_size(size):
    ds = SyntheticScenes("val", n=3, size=size)
    h, w = (size, size) if isinstance(size, int) else size
    for i in range(3):
        image, mask = ds[i]
        assert image.shape == (3, h, w) and mask.shape == (h, w) and ds.instances(i).shape == (h, w)
    assert ds.void_width == max(1, round(2 * min(h, w) / 128))


@pytest.mark.parametrize("kwargs, match", [
    ({"split": "test"}, "split"), ({"n": 0}, "n "), ({"n": 2.5}, "n "), ({"size": 8}, "size"),
    ({"size": (64,)}, "size"), ({"size": (64, 12)}, "size"), ({"seed": -1}, "seed"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticScenes(**kwargs)


# ------------------------------------------------------------------ SyntheticScenes: void band and instances
def test_void_band_width_on_a_straight_edge():
    for width in (1, 2, 3, 4):
        inst = np.zeros((6, 12), np.int64)
        inst[:, 6:] = 1
        void = synthetic.void_band(inst, width)
        cols = np.flatnonzero(void.any(axis=0))
        assert len(cols) == width and void[:, cols].all()  # exactly `width` columns across the edge
        assert cols.min() <= 5 and cols.max() >= 6 - (width == 1)  # on the edge, centred


def test_void_band_follows_instance_outlines():
    ds = SyntheticScenes("train", n=6, size=128)
    w = ds.void_width
    for i in range(6):
        _, mask = ds[i]
        inst = ds.instances(i).numpy()
        void = mask.numpy() == 255
        assert void.any()
        # every pixel touching another instance is void ...
        edge = np.zeros_like(void)
        dx, dy = inst[:, 1:] != inst[:, :-1], inst[1:] != inst[:-1]
        edge[:, 1:] |= dx
        edge[:, :-1] |= dx
        edge[1:] |= dy
        edge[:-1] |= dy
        assert void[edge].all()
        # ... and void reaches no further than w pixels (chessboard) from an outline
        near = metrics.boundary_band(inst, w)
        assert not (void & ~near).any()
        assert void.sum() < near.sum()


def test_instances_match_labels():
    ds = SyntheticScenes("train", n=8, size=64)
    for i in range(8):
        _, mask = ds[i]
        inst = ds.instances(i)
        assert inst.dtype == torch.int64
        labelled = mask != 255
        assert (mask[labelled & (inst == 0)] == 0).all()
        for k in inst.unique().tolist():
            classes = mask[(inst == k) & labelled].unique().tolist()
            assert len(classes) <= 1  # one class per instance id
            if k and classes:
                assert classes[0] != 0


# ------------------------------------------------------------------ SyntheticScenes: what makes it hard
def test_every_class_appears(pool):
    ds, scenes = pool
    counts = np.zeros(ds.num_classes, int)
    for s in scenes:
        labels = np.unique(s["labels"])
        counts[labels[labels != 255]] += 1
    assert (counts >= 10).all(), dict(zip(ds.class_names, counts))


def test_object_sizes_span_16x_in_area(pool):
    ds, scenes = pool
    areas = []
    for s in scenes:
        classes = np.bincount(s["instances"].ravel())
        for k in np.flatnonzero(classes)[1:]:
            cls = np.unique(s["labels"][s["instances"] == k])
            if synthetic.WATER not in cls:
                areas.append(classes[k])
    areas = np.array(areas)
    lo, hi = np.percentile(areas, [10, 90])
    assert hi / lo >= 16, (lo, hi)
    assert areas.max() >= 0.25 * 64 * 64  # some objects cover a large part of the image


def test_colour_does_not_give_the_class(pool):
    """A nearest-class-mean colour classifier per pixel (fitted on train) does badly on val."""
    ds, val = pool
    train = SyntheticScenes("train", n=100, size=64)
    rgb = np.concatenate([train.scene(i)["image"].reshape(-1, 3) for i in range(100)]).astype(np.float32)
    lab = np.concatenate([train.scene(i)["labels"].ravel() for i in range(100)])
    means = np.stack([rgb[lab == c].mean(axis=0) for c in range(ds.num_classes)])
    # the class means lie close together compared with the colour spread within a class
    spread = np.mean([rgb[lab == c].std(axis=0).mean() for c in range(ds.num_classes)])
    assert np.abs(means - means.mean(axis=0)).max() < spread
    v_rgb = np.stack([s["image"] for s in val[:60]]).reshape(-1, 3).astype(np.float32)
    v_lab = np.stack([s["labels"] for s in val[:60]]).ravel()
    pred = np.argmin(((v_rgb[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert metrics.scores(pred, v_lab, ds.num_classes)["miou"] < 0.2


def test_object_boundaries_are_image_edges(pool):
    """The CRF's premise: colour jumps are much larger across object outlines than elsewhere."""
    _, scenes = pool
    across, within = [], []
    for s in scenes[:40]:
        image, inst = s["image"].astype(np.float32), s["instances"]
        jump = np.abs(image[:, 1:] - image[:, :-1]).sum(-1)
        edge = inst[:, 1:] != inst[:, :-1]
        across.append(jump[edge])
        within.append(jump[~edge])
    assert np.median(np.concatenate(across)) > 4 * np.median(np.concatenate(within))


def test_thin_parts_and_occlusion(pool):
    _, scenes = pool
    thin = occluded = 0
    for s in scenes:
        for k in np.unique(s["instances"])[1:]:
            m = s["instances"] == k
            rows = m.sum(axis=1)
            if rows.max() and np.median(rows[rows > 0]) <= 3 and m.sum() >= 12:
                thin += 1
        occluded += len(np.unique(s["instances"])) - 1 < int(s["instances"].max())  # an id fully hidden
    assert thin >= 10
    assert occluded >= 1


def test_works_with_a_dataloader():
    loader = torch.utils.data.DataLoader(SyntheticScenes("train", n=4, size=32), batch_size=2)
    images, masks = next(iter(loader))
    assert images.shape == (2, 3, 32, 32) and masks.shape == (2, 32, 32)


# ------------------------------------------------------------------ palette and images
def test_palette_is_the_devkit_one():
    assert palette.VOC_PALETTE.shape == (256, 3) and palette.VOC_PALETTE.dtype == np.uint8
    assert palette.VOC_PALETTE[0].tolist() == [0, 0, 0]
    assert palette.VOC_PALETTE[1].tolist() == [128, 0, 0]
    assert palette.VOC_PALETTE[15].tolist() == [192, 128, 128]  # person
    assert palette.VOC_PALETTE[20].tolist() == [0, 64, 128]  # tvmonitor
    out = palette.colorize(np.array([[0, 1], [255, 15]]))
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[1, 0].tolist() == [255, 255, 255]  # void shown white
    assert palette.colorize(torch.tensor([[1]]))[0, 0].tolist() == [128, 0, 0]
    with pytest.raises(ValueError):
        palette.colorize(np.array([[300]]))


def test_label_png_roundtrip(tmp_path):
    labels = np.array([[0, 1, 20], [255, 7, 0]])
    path = palette.save_label_png(labels, tmp_path / "sub" / "a.png")
    with Image.open(path) as im:
        assert im.mode == "P"
        assert im.getpalette()[3:6] == [128, 0, 0]
    back = palette.read_label_png(path)
    assert back.dtype == np.int64 and np.array_equal(back, labels)
    assert sorted(os.listdir(tmp_path / "sub")) == ["a.png"]  # no temporary file left behind
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="mode 'RGB'"):
        palette.read_label_png(tmp_path / "rgb.png")
    with pytest.raises(FileNotFoundError):
        palette.read_label_png(tmp_path / "none.png")


def test_read_image(tmp_path):
    array = np.zeros((4, 6, 3), np.uint8)
    array[0, 0] = (255, 0, 0)
    Image.fromarray(array).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.dtype == torch.uint8 and image.shape == (3, 4, 6) and image[:, 0, 0].tolist() == [255, 0, 0]
    # EXIF orientation 6 (rotate 90 degrees clockwise to view): the tensor is the viewed image
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(array).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    assert read_image(tmp_path / "rot.jpg").shape == (3, 6, 4)
    Image.fromarray(array).convert("L").save(tmp_path / "grey.png")
    assert read_image(tmp_path / "grey.png").shape == (3, 4, 6)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match="bad.jpg"):
        read_image(tmp_path / "bad.jpg")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")


# ------------------------------------------------------------------ VOCSegmentation on a fixture
def write_voc(root, ids=("2007_000001", "2007_000002", "2007_000003", "2008_000004"), train=2, aug=()):
    """A tiny VOC 2012 tree: JPEGs, palette PNG labels, ImageSets; `aug` ids get SegmentationClassAug labels."""
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = {}
    for k, name in enumerate(ids):
        h, w = 10 + k, 14
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        lab = np.zeros((h, w), np.int64)
        lab[2:6, 3:9] = k + 1
        lab[1, :] = 255
        labels[name] = lab
        palette.save_label_png(lab, voc / "SegmentationClass" / f"{name}.png")
    for name in aug:
        Image.fromarray((labels[name] * 0 + 7).astype(np.uint8), mode="L").save(
            (voc / "SegmentationClassAug").mkdir(exist_ok=True) or voc / "SegmentationClassAug" / f"{name}.png")
    sets = voc / "ImageSets" / "Segmentation"
    (sets / "train.txt").write_text("\n".join(ids[:train]) + "\n")
    (sets / "val.txt").write_text("\n".join(ids[train:]) + "\n")
    return voc, labels


def test_voc_train_and_val(tmp_path):
    voc, labels = write_voc(tmp_path)
    ds = VOCSegmentation(tmp_path, "train")
    assert ds.num_classes == 21 and ds.class_names[15] == "person" and ds.ids == ["2007_000001", "2007_000002"]
    image, mask = ds[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 11, 14)
    assert mask.dtype == torch.int64 and torch.equal(mask, torch.from_numpy(labels["2007_000002"]))
    val = VOCSegmentation(voc, "val")  # root may be the VOC2012 folder itself
    assert len(val) == 2 and "val" in repr(val)


def test_voc_transform_applies(tmp_path):
    write_voc(tmp_path)
    torch.manual_seed(0)
    ds = VOCSegmentation(tmp_path, "val", transform=train_transform(crop=8, scale=(1.0, 1.0)))
    image, mask = ds[0]
    assert image.shape == (3, 8, 8) and mask.shape == (8, 8)


def test_voc_errors_name_the_path_layout_and_command(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        VOCSegmentation(tmp_path / "nowhere")
    assert "nowhere" in str(e.value) and "JPEGImages" in str(e.value) and "python -m dlcore download voc" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="download voc"):
        VOCSegmentation(tmp_path / "empty")
    voc, _ = write_voc(tmp_path / "r")
    (voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="val.txt.*download voc"):
        VOCSegmentation(tmp_path / "r", "val")
    (voc / "JPEGImages" / "2007_000002.jpg").unlink()
    ds = VOCSegmentation(tmp_path / "r", "train")
    ds[0]
    with pytest.raises(FileNotFoundError, match="2007_000002.jpg"):
        ds[1]
    with pytest.raises(ValueError, match="split"):
        VOCSegmentation(tmp_path / "r", "test")


def test_voc_corrupt_image(tmp_path):
    voc, _ = write_voc(tmp_path)
    (voc / "JPEGImages" / "2007_000001.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match="2007_000001.jpg"):
        VOCSegmentation(tmp_path, "train")[0]


def test_trainaug_split(tmp_path):
    ids = ("2007_000001", "2007_000002", "2007_000003", "2008_000004", "2008_000005")
    # train = first 2, val = the other 3; SBD labels for one train id, one SBD-only id ... and one val id
    voc, _ = write_voc(tmp_path, ids=ids, train=2, aug=("2007_000002", "2008_000004", "2008_000005"))
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000003\n2008_000005\n")
    ds = VOCSegmentation(tmp_path, "trainaug")
    # (train U SBD) minus val, sorted: the val id with an SBD label is left out
    assert ds.ids == ["2007_000001", "2007_000002", "2008_000004"]
    assert (ds[1][1] == 7).all()  # SegmentationClassAug label used where there is one
    assert set(ds[0][1].unique().tolist()) == {0, 1, 255}  # a train id without one falls back to SegmentationClass
    (voc / "ImageSets" / "Segmentation" / "trainaug.txt").write_text("2008_000004\n")
    assert VOCSegmentation(tmp_path, "trainaug").ids == ["2008_000004"]  # the official list wins


def test_trainaug_without_sbd_says_how_to_get_it(tmp_path):
    write_voc(tmp_path)
    with pytest.raises(FileNotFoundError, match="--sbd"):
        VOCSegmentation(tmp_path, "trainaug")


# ------------------------------------------------------------------ transforms
def test_normalize_modes():
    x = torch.tensor([0, 128, 255], dtype=torch.uint8).view(3, 1, 1)
    y = normalize(x, "imagenet")
    expected = (torch.tensor([0, 128, 255]) / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert y.dtype == torch.float32 and torch.allclose(y.view(3), expected)
    c = normalize(x[None], mode="caffe")
    assert c.shape == (1, 3, 1, 1)
    # BGR order: channel 0 is blue (255) minus the blue mean
    assert torch.allclose(c.view(3), torch.tensor([255.0, 128.0, 0.0]) - torch.tensor(CAFFE_MEAN_BGR))
    with pytest.raises(ValueError, match="mode"):
        normalize(x, "bgr")
    with pytest.raises(ValueError, match="uint8"):
        normalize(x.float())
    with pytest.raises(ValueError, match="shape"):
        normalize(torch.zeros(4, 2, 2, dtype=torch.uint8))


def blocks(h=96, w=128, block=16, seed=0):
    """An image of coloured blocks and the mask that its colours determine (class k has colour COLOURS[k])."""
    g = np.random.default_rng(seed)
    classes = g.integers(0, 5, (h // block + 1, w // block + 1))
    mask = np.kron(classes, np.ones((block, block), int))[:h, :w]
    return torch.from_numpy(COLOURS[mask].transpose(2, 0, 1).copy()), torch.from_numpy(mask)


COLOURS = np.array([[0, 0, 0], [250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0]], np.uint8)


def derived_mask(image):
    """Class of each pixel whose colour is within 8 of a block colour, -1 where blended."""
    d = np.abs(image.permute(1, 2, 0).numpy()[:, :, None, :].astype(int) - COLOURS[None, None].astype(int)).max(-1)
    return np.where(d.min(-1) <= 8, d.argmin(-1), -1)


def test_train_transform_keeps_image_and_mask_aligned():
    image, mask = blocks()
    tf = train_transform(crop=64)
    for seed in range(8):
        torch.manual_seed(seed)
        out_image, out_mask = tf(image, mask)
        assert out_image.dtype == torch.uint8 and out_image.shape == (3, 64, 64)
        assert out_mask.dtype == torch.int64 and out_mask.shape == (64, 64)
        derived, m = derived_mask(out_image), out_mask.numpy()
        compared = (derived >= 0) & (m != 255)
        assert compared.mean() > 0.5
        assert (derived[compared] == m[compared]).mean() > 0.99
    torch.manual_seed(3)
    a = tf(image, mask)
    torch.manual_seed(3)
    b = tf(image, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # deterministic under torch.manual_seed


def test_train_transform_flips_both_together():
    image, mask = blocks(h=32, w=32)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out_image, out_mask = train_transform(crop=32, scale=(1.0, 1.0))(image, mask)
        flipped = torch.equal(out_image, image.flip(-1))
        assert flipped or torch.equal(out_image, image)
        assert torch.equal(out_mask, mask.flip(-1) if flipped else mask)
        seen.add(flipped)
    assert seen == {True, False}


def test_train_transform_pads_with_mean_and_void():
    image, mask = blocks(h=20, w=30)
    torch.manual_seed(0)
    out_image, out_mask = train_transform(crop=50, scale=(1.0, 1.0), flip=False)(image, mask)
    pad = out_mask == 255
    assert pad.sum() == 50 * 50 - 20 * 30  # everything outside the 20 x 30 image is padding, labelled void
    assert (out_image.permute(1, 2, 0)[pad] == torch.tensor(MEAN_RGB_UINT8, dtype=torch.uint8)).all()
    assert set(out_mask[~pad].unique().tolist()) <= set(range(5))
    with pytest.raises(ValueError):
        train_transform(crop=0)
    with pytest.raises(ValueError):
        train_transform(scale=(1.5, 0.5))


def test_train_transform_scales():
    image, mask = blocks(h=64, w=64)
    seen = set()
    for seed in range(10):
        torch.manual_seed(seed)
        _, m = train_transform(crop=128, flip=False)(image, mask)
        seen.add(int((m != 255).sum()))  # the scaled image's area inside the 128 x 128 canvas
    areas = sorted(seen)
    assert areas[0] < 64 * 64 < areas[-1] and areas[0] >= (0.5 * 64) ** 2 - 200 and areas[-1] <= (1.5 * 64 + 1) ** 2


# ------------------------------------------------------------------ download: no network, archive safety
def make_tar(path, members):
    """members: list of (TarInfo-kwargs, bytes or None)."""
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            ti = tarfile.TarInfo(info.pop("name"))
            for k, v in info.items():
                setattr(ti, k, v)
            if data is not None:
                ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


def test_safe_extract_accepts_a_normal_archive(tmp_path):
    tar = make_tar(tmp_path / "ok.tar", [({"name": "VOCdevkit/VOC2012/a.txt"}, b"hello"),
                                         ({"name": "VOCdevkit/link", "type": tarfile.SYMTYPE,
                                           "linkname": "VOC2012/a.txt"}, None)])
    names = download.safe_extract(tar, tmp_path / "out")
    assert (tmp_path / "out" / "VOCdevkit" / "VOC2012" / "a.txt").read_bytes() == b"hello"
    assert "VOCdevkit/VOC2012/a.txt" in names


@pytest.mark.parametrize("member, match", [
    ({"name": "/tmp/evil.txt"}, "absolute"),
    ({"name": "../evil.txt"}, r"\.\."),
    ({"name": "a/../../evil.txt"}, r"\.\."),
    ({"name": "evil_link", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "symlink"),
    ({"name": "a/evil_link", "type": tarfile.SYMTYPE, "linkname": "../../x"}, "symlink"),
    ({"name": "evil_hard", "type": tarfile.LNKTYPE, "linkname": "../outside.txt"}, "hardlink"),
    ({"name": "dev", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, "device"),
    ({"name": "fifo", "type": tarfile.FIFOTYPE}, "device"),
])
def test_safe_extract_refuses_escapes(tmp_path, member, match):
    data = b"x" if member.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else None
    tar = make_tar(tmp_path / "bad.tar", [({"name": "fine.txt"}, b"ok"), (dict(member), data)])
    with pytest.raises(ValueError, match=match):
        download.safe_extract(tar, tmp_path / "out")
    assert not (tmp_path / "out" / "fine.txt").exists()  # checked before anything is written
    assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_zip(tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("SegmentationClassAug/a.png", b"png")
    download.safe_extract(good, tmp_path / "out")
    assert (tmp_path / "out" / "SegmentationClassAug" / "a.png").exists()
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("../evil.png", b"png")
    with pytest.raises(ValueError, match=r"\.\."):
        download.safe_extract(bad, tmp_path / "out2")
    (tmp_path / "junk.bin").write_bytes(b"neither")
    with pytest.raises(ValueError, match="neither a tar nor a zip"):
        download.safe_extract(tmp_path / "junk.bin", tmp_path / "out3")


def test_fetch_verifies_and_renames_part_file(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"archive bytes")
    md5 = download.file_digest(src, "md5")
    out = download.fetch(src.as_uri(), tmp_path / "dl" / "a.bin", md5=md5, progress=False)  # file://, no network
    assert out.read_bytes() == b"archive bytes" and not (tmp_path / "dl" / "a.bin.part").exists()
    with pytest.raises(ValueError, match="does not match"):
        download.fetch(src.as_uri(), tmp_path / "dl" / "b.bin", md5="0" * 32, progress=False)
    assert not (tmp_path / "dl" / "b.bin").exists()  # a bad download never takes the final name
    with pytest.raises(ValueError, match="sha256"):
        download.verify(src, sha256="f" * 64)


def test_download_cli_arguments():
    from dlcore.cli import build_parser

    args = build_parser("download").parse_args(["download", "voc", "--root", "/x", "--sbd"])
    assert args.command == "download" and args.dataset == "voc" and args.root == "/x" and args.sbd
    assert download.VOC2012.md5 == "6cd6e144f989b92b3379bac3b3de84fd"
    with pytest.raises(SystemExit):
        build_parser("download").parse_args(["download", "voc"])  # --root is required
