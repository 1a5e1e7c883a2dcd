"""PASCAL VOC 2012 segmentation and the SBD "trainaug" set, read from a local folder.

Layout (what the official tar and the SegmentationClassAug archive unpack to):

    ROOT/VOCdevkit/VOC2012/
        JPEGImages/<id>.jpg
        SegmentationClass/<id>.png           palette PNGs, 0..20 and 255 = void (the VOC annotations)
        SegmentationClassAug/<id>.png        SBD labels converted to the same format (greyscale PNGs)
        ImageSets/Segmentation/{train,val,trainaug}.txt

ROOT may also be the VOC2012 folder itself. Splits: "train" (1,464) and "val" (1,449) read
SegmentationClass; "trainaug" (10,582: VOC train + SBD, minus VOC val, as DeepLab trains) reads
SegmentationClassAug, with ids from ImageSets/Segmentation/trainaug.txt when that file is there, otherwise
(VOC train ids  U  every id with a SegmentationClassAug label) minus the VOC val ids, sorted. For an id in
both, the SegmentationClassAug label is used (the DeepLab list does the same).

`write_voc_fixture` writes a tiny dataset in this exact layout from SyntheticScenes (tests, notebook 08).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from dlcore.data.palette import read_label_png, save_label_png

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
SPLITS = ("train", "val", "trainaug")
DOWNLOAD_HINT = "python -m dlcore download voc --root DIR"
LAYOUT = ("DIR/VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png, ImageSets/Segmentation/{train,val}.txt}"
          " (+ SegmentationClassAug/*.png for trainaug)")


def find_voc2012(root) -> Path:
    """root/VOCdevkit/VOC2012, root/VOC2012 or root itself (whichever holds JPEGImages)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"VOC root {root} does not exist; expected the layout {LAYOUT}. "
                                f"Get it with: {DOWNLOAD_HINT}")
    for candidate in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise FileNotFoundError(f"no VOC2012/JPEGImages under {root}; expected the layout {LAYOUT}. "
                            f"Get it with: {DOWNLOAD_HINT}")


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} does not exist; expected the layout {LAYOUT}. "
                                f"Get it with: {DOWNLOAD_HINT}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _trainaug_ids(voc: Path) -> list[str]:
    sets = voc / "ImageSets" / "Segmentation"
    listed = sets / "trainaug.txt"
    if listed.is_file():
        return _read_ids(listed)
    aug = voc / "SegmentationClassAug"
    if not aug.is_dir():
        raise FileNotFoundError(f"split 'trainaug' needs {aug} (SBD labels as PNGs); "
                                f"get it with: {DOWNLOAD_HINT} --sbd")
    val = set(_read_ids(sets / "val.txt"))
    ids = set(_read_ids(sets / "train.txt")) | {p.stem for p in aug.glob("*.png")}
    return sorted(ids - val)


class VOCSegmentation(Dataset):
    """PASCAL VOC 2012 (+ SBD): `ds[i] -> (image uint8 [3,H,W], mask int64 [H,W])`, 255 = void.

    transform: optional callable (image, mask) -> (image, mask), e.g. `dlcore.data.transforms.train_transform()`.
    class_names: the classes the label indices stand for, when a dataset in VOC's layout is not VOC (default
        VOC's 21; e.g. `SyntheticScenes.class_names` for `write_voc_fixture`'s folders).
    """

    class_names = list(VOC_CLASSES)
    num_classes = len(VOC_CLASSES)
    ignore_index = 255

    def __init__(self, root, split: str = "train", transform=None, *, class_names=None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if class_names is not None:
            if len(class_names) < 2:
                raise ValueError(f"class_names needs the background and at least one class, got {list(class_names)}")
            self.class_names, self.num_classes = list(class_names), len(class_names)
        self.root = find_voc2012(root)
        self.split, self.transform = split, transform
        self.ids = (_trainaug_ids(self.root) if split == "trainaug"
                    else _read_ids(self.root / "ImageSets" / "Segmentation" / f"{split}.txt"))
        if not self.ids:
            raise ValueError(f"split {split!r} under {self.root} lists no images")
        self.label_dir = self.root / ("SegmentationClassAug" if split == "trainaug" else "SegmentationClass")

    def __len__(self) -> int:
        return len(self.ids)

    def paths(self, i: int) -> tuple[Path, Path]:
        name = self.ids[i]
        image = self.root / "JPEGImages" / f"{name}.jpg"
        label = self.label_dir / f"{name}.png"
        if self.split == "trainaug" and not label.is_file():  # a VOC train id missing from the Aug set
            label = self.root / "SegmentationClass" / f"{name}.png"
        return image, label

    def __getitem__(self, i):
        from dlcore.data import read_image

        image_path, label_path = self.paths(i)
        for path, what in ((image_path, "image"), (label_path, "label")):
            if not path.is_file():
                raise FileNotFoundError(f"{what} {path} (id {self.ids[i]!r} of split {self.split!r}) is missing; "
                                        f"expected the layout {LAYOUT}. Get it with: {DOWNLOAD_HINT}")
        image = read_image(image_path)
        mask = torch.from_numpy(read_label_png(label_path))
        if tuple(image.shape[1:]) != tuple(mask.shape):
            raise ValueError(f"image {image_path} is {tuple(image.shape[1:])} but its label {label_path} is "
                             f"{tuple(mask.shape)}; the two must have the same size")
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return f"VOCSegmentation(root={str(self.root)!r}, split={self.split!r}): {len(self)} images"


def write_voc_fixture(root, *, n_train: int = 4, n_val: int = 4, size=64, seed: int = 0, offset: int = 0) -> Path:
    """A dataset in the exact VOC 2012 layout, made from SyntheticScenes (tests and notebook 08).

    root/VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png, ImageSets/Segmentation/{train,val}.txt};
    each split holds SyntheticScenes(split, seed=seed) scenes offset .. offset+n-1 (ids name the scene index);
    SyntheticScenes' class indices are written as they are (read them back with
    `VOCSegmentation(..., class_names=SyntheticScenes.class_names)`), the void band as 255. Returns the VOC2012 folder.
    """
    from PIL import Image

    from dlcore.data.synthetic import SyntheticScenes

    voc = Path(root) / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        scenes = SyntheticScenes(split, n=offset + n, size=size, seed=seed)
        ids = [f"2007_{split}_{i:06d}" for i in range(offset, offset + n)]
        for name, (image, mask) in zip(ids, (scenes[i] for i in range(offset, offset + n))):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
            save_label_png(mask.numpy(), voc / "SegmentationClass" / f"{name}.png")
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return voc
