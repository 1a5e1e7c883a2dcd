"""The PASCAL VOC 2012 protocol of the papers, their published tables, and the CRF cross-validation.

The protocol (FCN Sec. 4-5; DeepLab v1 Sec. 5; DeepLab v2 Sec. 4): train on "trainaug" (VOC 2012 train plus
the SBD annotations, 10,582 images), evaluate on VOC 2012 val (1,449 images) at full resolution, label 255
(the void band around objects) ignored, mean IoU over the 21 classes. Options the papers add at test time:
multi-scale inputs (`scales`), left-right flipping (`flip`) and the fully connected CRF (`crf`).

The CRF's appearance-kernel parameters (w1, sigma_alpha, sigma_beta) are cross-validated on a small held-out
subset of val (100 images) with the smoothness kernel fixed at w2 = 3, sigma_gamma = 3 (DeepLab v1 Sec. 5,
a coarse-to-fine grid search; DeepLab v2 Sec. 4.1 does the same). `crf_search` does it with the network evaluated once
per image.

The published numbers are `TABLES` (each with its source) and `paper_vs_measured` shows a table beside measured
columns, which read "not run" until an evaluation fills them. `per_class_table` prints per-class IoU as the
papers' result tables do (one row per method, one column per class, mean last).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
# The papers' per-class tables use these short headers.
VOC_SHORT = (
    "bkg", "aero", "bike", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "table", "dog",
    "horse", "mbike", "person", "plant", "sheep", "sofa", "train", "tv",
)
VOC_VAL_IMAGES = 1449
VOC_TRAINAUG_IMAGES = 10582
NOT_RUN = "not run"


# --------------------------------------------------------------------------------------------------
# The papers' tables
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PaperTable:
    """A published table: `rows` are (row name exactly as printed, values in % for `columns`).

    columns: (key, header) pairs; key is the `dlcore.metrics.scores` key a measured value is compared with
    ("miou", "pixel_acc", "mean_acc", "fwiou"; "miou_crf" for the after-CRF column). `recipes` says how each
    row maps onto dlcore (model name and evaluation options).
    """

    key: str
    title: str
    source: str
    split: str
    columns: tuple
    rows: tuple
    recipes: dict = field(default_factory=dict)
    note: str = ""

    @property
    def row_names(self) -> list[str]:
        return [name for name, _ in self.rows]

    def value(self, row: str, column: str | None = None) -> float:
        """The published number (%) of `row` in `column` (a key; default the last column)."""
        keys = [k for k, _ in self.columns]
        column = column or keys[-1]
        for name, values in self.rows:
            if name == row:
                return values[keys.index(column)]
        raise ValueError(f"table {self.key!r} has no row {row!r}; its rows: {self.row_names}")


DEEPLAB_V1 = "Chen et al., Semantic Image Segmentation with Deep Convolutional Nets and Fully Connected CRFs, ICLR 2015 (arXiv 1412.7062v4)"
DEEPLAB_V2 = "Chen et al., DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous Convolution, and Fully Connected CRFs, TPAMI 2017 (arXiv 1606.00915v2)"
FCN = "Long, Shelhamer, Darrell, Fully Convolutional Networks for Semantic Segmentation, CVPR 2015"

TABLES = {
    t.key: t for t in (
        PaperTable(
            key="deeplab_v1_table1", title="DeepLab v1 Table 1(a): VOC 2012 val, mean IoU (train on trainaug)",
            source=f"{DEEPLAB_V1}, Table 1(a)", split="val",
            columns=(("miou", "mean IoU"),),
            rows=(("DeepLab", (59.80,)), ("DeepLab-CRF", (63.74,)), ("DeepLab-MSc", (61.30,)),
                  ("DeepLab-MSc-CRF", (65.21,)), ("DeepLab-7x7", (64.38,)), ("DeepLab-CRF-7x7", (67.64,)),
                  ("DeepLab-LargeFOV", (62.25,)), ("DeepLab-CRF-LargeFOV", (67.64,)),
                  ("DeepLab-MSc-LargeFOV", (64.21,)), ("DeepLab-MSc-CRF-LargeFOV", (68.70,))),
            recipes={"DeepLab": "deeplab-v1-4x4", "DeepLab-CRF": "deeplab-v1-4x4 --crf",
                     "DeepLab-MSc": "deeplab-v1-4x4-msc", "DeepLab-MSc-CRF": "deeplab-v1-4x4-msc --crf",
                     "DeepLab-7x7": "deeplab-v1-7x7", "DeepLab-CRF-7x7": "deeplab-v1-7x7 --crf",
                     "DeepLab-LargeFOV": "deeplab-v1-largefov", "DeepLab-CRF-LargeFOV": "deeplab-v1-largefov --crf",
                     "DeepLab-MSc-LargeFOV": "deeplab-v1-largefov-msc",
                     "DeepLab-MSc-CRF-LargeFOV": "deeplab-v1-largefov-msc --crf"},
        ),
        PaperTable(
            key="deeplab_v1_table2",
            title="DeepLab v1 Table 2: field of view, VOC 2012 val mean IoU after the CRF",
            source=f"{DEEPLAB_V1}, Table 2", split="val",
            columns=(("miou_crf", "mean IoU (after CRF)"),),
            rows=(("DeepLab-CRF-7x7", (67.64,)), ("DeepLab-CRF", (63.74,)), ("DeepLab-CRF-4x4", (67.14,)),
                  ("DeepLab-CRF-LargeFOV", (67.64,))),
            recipes={"DeepLab-CRF-7x7": "deeplab-v1-7x7 --crf", "DeepLab-CRF": "deeplab-v1-4x4 --crf",
                     "DeepLab-CRF-4x4": "deeplab-v1-4x4-r8 --crf", "DeepLab-CRF-LargeFOV": "deeplab-v1-largefov --crf"},
            note="kernel 7x7 / 4x4 / 4x4 / 3x3 at input stride 4 / 4 / 8 / 12; the paper notes 'reduced-resolution' "
                 "val for the speed column only",
        ),
        PaperTable(
            key="deeplab_v1_test", title="DeepLab v1 Table 1(b): VOC 2012 test, mean IoU",
            source=f"{DEEPLAB_V1}, Table 1(b)", split="test",
            columns=(("miou_crf", "mean IoU"),),
            rows=(("DeepLab-CRF", (66.4,)), ("DeepLab-MSc-CRF", (67.1,)), ("DeepLab-CRF-7x7", (70.3,)),
                  ("DeepLab-CRF-LargeFOV", (70.3,)), ("DeepLab-MSc-CRF-LargeFOV", (71.6,))),
            recipes={"DeepLab-MSc-CRF-LargeFOV": "deeplab-v1-largefov-msc --crf"},
            note="test labels are withheld: submit to the PASCAL evaluation server",
        ),
        PaperTable(
            key="deeplab_v2_table3",
            title="DeepLab v2 Table 3: ASPP with VGG-16, VOC 2012 val mean IoU before / after the CRF",
            source=f"{DEEPLAB_V2}, Table 3", split="val",
            columns=(("miou", "before CRF"), ("miou_crf", "after CRF")),
            rows=(("LargeFOV", (65.76, 69.84)), ("ASPP-S", (66.98, 69.73)), ("ASPP-L", (68.96, 71.57))),
            recipes={"LargeFOV": "deeplab-v2-vgg-largefov", "ASPP-S": "deeplab-v2-vgg-aspp-s",
                     "ASPP-L": "deeplab-v2-vgg-aspp-l"},
            note="LargeFOV: one branch, rate 12; ASPP-S: rates {2, 4, 8, 12}; ASPP-L: rates {6, 12, 18, 24}",
        ),
        PaperTable(
            key="deeplab_v2_table4",
            title="DeepLab v2 Table 4: ResNet-101, VOC 2012 val mean IoU",
            source=f"{DEEPLAB_V2}, Table 4", split="val",
            columns=(("miou", "mean IoU"),),
            rows=(("ResNet-101", (68.72,)), ("+ MSC", (71.27,)), ("+ MSC + COCO", (73.28,)),
                  ("+ MSC + COCO + Aug", (74.87,)), ("+ MSC + COCO + Aug + LargeFOV", (75.54,)),
                  ("+ MSC + COCO + Aug + ASPP", (76.35,)), ("+ MSC + COCO + Aug + ASPP + CRF", (77.69,))),
            recipes={"ResNet-101": "baseline ResNet-101 head (not in dlcore; closest: deeplab-v2-resnet101-largefov)",
                     "+ MSC": "baseline head + MSC (not in dlcore; closest: deeplab-v2-resnet101-largefov-msc)",
                     "+ MSC + COCO": "baseline head + MSC, COCO init (not in dlcore)",
                     "+ MSC + COCO + Aug": "baseline head + MSC, COCO init, scale augmentation (not in dlcore)",
                     "+ MSC + COCO + Aug + LargeFOV": "deeplab-v2-resnet101-largefov-msc (COCO init)",
                     "+ MSC + COCO + Aug + ASPP": "deeplab-v2-resnet101-aspp-l-msc (COCO init: the released "
                                                 "train_iter_20000.caffemodel)",
                     "+ MSC + COCO + Aug + ASPP + CRF": "deeplab-v2-resnet101-aspp-l-msc --crf (COCO init)"},
            note="the paper's columns are ticks MSC / COCO / Aug / LargeFOV / ASPP / CRF; 'Aug' is random input "
                 "rescaling 0.5-1.5 during training, 'COCO' pre-training on MS-COCO; the rows are written as "
                 "the ticked columns",
        ),
        PaperTable(
            key="deeplab_v2_test", title="DeepLab v2 Table 5: VOC 2012 test, mean IoU",
            source=f"{DEEPLAB_V2}, Table 5", split="test",
            columns=(("miou_crf", "mean IoU"),),
            rows=(("DeepLab-CRF-LargeFOV", (70.3,)), ("DeepLab", (79.7,))),
            recipes={"DeepLab": "deeplab-v2-resnet101-aspp-l-msc --crf (COCO init, fine-tuned on trainval: the "
                                "released train2_iter_20000.caffemodel)"},
            note="'DeepLab' is ResNet-101 + ASPP-L + MSC + COCO + CRF; test labels are withheld (evaluation server)",
        ),
        PaperTable(
            key="fcn_table2", title="FCN Table 2: skip FCNs, PASCAL VOC 2011 reduced val (736 images)",
            source=f"{FCN}, Table 2", split="seg11valid",
            columns=(("pixel_acc", "pixel acc."), ("mean_acc", "mean acc."), ("miou", "mean IU"), ("fwiou", "f.w. IU")),
            rows=(("FCN-32s-fixed", (83.0, 59.7, 45.4, 72.0)), ("FCN-32s", (89.1, 73.3, 59.4, 81.4)),
                  ("FCN-16s", (90.0, 75.7, 62.4, 83.0)), ("FCN-8s", (90.3, 75.9, 62.7, 83.2))),
            recipes={"FCN-32s": "fcn32s", "FCN-16s": "fcn16s", "FCN-8s": "fcn8s"},
            note="FCN trains on SBD train (8,498 images) and evaluates on the VOC 2011 val images not in SBD; "
                 "VOC 2012 val numbers of dlcore's FCNs are comparable in kind, not exactly",
        ),
    )
}


def _measured_value(entry, column_key: str, headline: str):
    """measured[row] is a float (the headline column) or a dict keyed by metrics.scores keys."""
    if entry is None:
        return None
    if isinstance(entry, dict):
        return entry.get(column_key)
    return entry if column_key == headline else None


def _fmt_measured(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_RUN
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"measured scores are fractions in [0, 1] as dlcore.metrics returns them, got {value}")
    return f"{100 * value:.2f}"


def paper_vs_measured(table: PaperTable | str, measured: dict | None = None) -> str:
    """A markdown table: the paper's columns beside the measured ones ("not run" where nothing was measured).

    measured: {row name: float or scores dict}; floats and dict values are fractions in [0, 1] as
    `dlcore.metrics.scores` returns them (shown in %). A float stands for the table's last column; a dict is
    read by column key ("miou", "pixel_acc", "mean_acc", "fwiou", "miou_crf"). Unknown row names are an error.
    """
    table = TABLES[table] if isinstance(table, str) else table
    measured = measured or {}
    unknown = set(measured) - set(table.row_names)
    if unknown:
        raise ValueError(f"measured rows {sorted(unknown)} are not rows of {table.key}; its rows: {table.row_names}")
    headline = table.columns[-1][0]
    head = ["method"] + [f"paper {h}" for _, h in table.columns] + [f"measured {h}" for _, h in table.columns]
    lines = [f"{table.title}", f"source: {table.source}", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, values in table.rows:
        ours = [_fmt_measured(_measured_value(measured.get(name), k, headline)) for k, _ in table.columns]
        lines.append("| " + " | ".join([name] + [f"{v:.2f}" for v in values] + ours) + " |")
    if table.note:
        lines += ["", f"note: {table.note}"]
    return "\n".join(lines)


def per_class_table(results: dict, class_names=VOC_CLASSES, short: bool = True) -> str:
    """Per-class IoU in the papers' form: one row per method, one column per class (%), mean IoU last.

    results: {method: iou array [C] (fractions; NaN = class absent, shown as '-') or a metrics.scores dict}.
    The mean is over the classes present (the VOC definition, as `dlcore.metrics`).
    """
    names = list(VOC_SHORT if short and tuple(class_names) == VOC_CLASSES else class_names)
    lines = ["| method | " + " | ".join(names) + " | mIoU |", "|" + " --- |" * (len(names) + 2)]
    for method, iou in results.items():
        iou = np.asarray(iou["iou"] if isinstance(iou, dict) else iou, dtype=np.float64)
        if iou.shape != (len(names),):
            raise ValueError(f"{method}: {iou.shape[0] if iou.ndim else 0} per-class IoUs for {len(names)} classes")
        cells = ["-" if np.isnan(v) else f"{100 * v:.1f}" for v in iou]
        mean = np.nanmean(iou) if np.isfinite(iou).any() else float("nan")
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {100 * mean:.1f} |")
    return "\n".join(lines)


def measured_rows(model_name: str, scores: dict | None = None, scores_crf: dict | None = None) -> dict:
    """{table key: {row: measured entry}} for the val-set rows that `model_name` evaluated alone reproduces.

    A row counts when its recipe is exactly the model (no CRF column) or the model with `--crf` (a parenthetical
    note such as "(COCO init)" is the user's to honour); rows needing heads dlcore lacks or the test server stay
    "not run". scores / scores_crf: `dlcore.metrics.scores` of
    the network alone and with the CRF on VOC 2012 val.
    """
    out: dict = {}
    for table in TABLES.values():
        if table.split == "test":
            continue
        for row, recipe in table.recipes.items():
            recipe = recipe.split(" (")[0]  # a parenthetical says how the row was trained, e.g. "(COCO init)"
            crf = recipe == f"{model_name} --crf"
            if recipe != model_name and not crf:
                continue
            entry = {}
            if scores is not None and not crf:
                entry.update({k: scores[k] for k in ("pixel_acc", "mean_acc", "miou", "fwiou") if k in scores})
            if scores_crf is not None and (crf or any(k == "miou_crf" for k, _ in table.columns)):
                entry["miou_crf"] = scores_crf["miou"]
            if entry:
                out.setdefault(table.key, {})[row] = entry
    return out


def write_voc_fixture(root, *, n_train: int = 4, n_val: int = 4, size=64, seed: int = 0) -> Path:
    """A tiny dataset in the exact VOC 2012 layout, made from SyntheticScenes (tests and notebook 08 smoke runs).

    root/VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png, ImageSets/Segmentation/{train,val}.txt};
    SyntheticScenes' classes (fewer than 21) are written as VOC class indices, the void band as 255.
    Returns the VOC2012 folder.
    """
    from PIL import Image

    from dlcore.data import SyntheticScenes
    from dlcore.data.palette import save_label_png

    voc = Path(root) / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        scenes = SyntheticScenes(split, n=n, size=size, seed=seed)
        ids = [f"2007_{split}_{i:06d}" for i in range(n)]
        for name, (image, mask) in zip(ids, (scenes[i] for i in range(n))):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
            save_label_png(mask.numpy(), voc / "SegmentationClass" / f"{name}.png")
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return voc


# --------------------------------------------------------------------------------------------------
# Evaluation on VOC val
# --------------------------------------------------------------------------------------------------

def checkpoint_normalize(checkpoint) -> str:
    """The input normalization a checkpoint's weights expect: meta "normalize" ("caffe" for imported Caffe models)."""
    meta = checkpoint.get("meta", {}) if isinstance(checkpoint, dict) else {}
    return meta.get("normalize", "imagenet")


def evaluate_voc(model, root, split: str = "val", *, device="cpu", normalize: str = "imagenet",
                 scales=(1.0,), flip: bool = False, crf=None, progress: bool = True, dataset=None) -> dict:
    """The papers' protocol: full-resolution VOC 2012 `split`, 255 ignored, through `dlcore.engine.evaluate`.

    `dataset` replaces the VOC folder (a fixture or SyntheticScenes). Returns `dlcore.metrics.scores`.
    """
    from dlcore.engine import evaluate

    if dataset is None:
        from dlcore.data import VOCSegmentation

        dataset = VOCSegmentation(root, split=split)
    return evaluate(model, dataset, dataset.num_classes, device=device, normalize=normalize, scales=tuple(scales),
                    flip=flip, crf=crf, batch_size=1, progress=progress)


def heldout_indices(n_total: int, n_heldout: int) -> list[int]:
    """n_heldout indices spread evenly over the dataset (deterministic, so a search can be repeated)."""
    if n_heldout < 1:
        raise ValueError(f"n_heldout must be >= 1, got {n_heldout}")
    n = min(n_heldout, n_total)
    return sorted({int(i) for i in np.linspace(0, n_total - 1, n).round()})


def crf_search(model, dataset, *, n_heldout: int = 100, w1=(3, 4, 5), sigma_alpha=(30, 50, 80, 121),
               sigma_beta=(3, 5, 10), w2: float = 3.0, sigma_gamma: float = 3.0, iterations: int = 10,
               device="cpu", normalize: str = "imagenet", progress: bool = True) -> dict:
    """Cross-validate the CRF's appearance kernel on held-out images (DeepLab v1 Sec. 5, v2 Sec. 4.1).

    The network runs once per image; each (w1, sigma_alpha, sigma_beta) in the grid refines the cached
    probabilities with w2 and sigma_gamma fixed. Returns {"rows": [{w1, sigma_alpha, sigma_beta, miou}, ...],
    "best": the best row, "no_crf": mIoU of the network alone, "images": number of held-out images}.
    """
    import torch
    from tqdm.auto import tqdm

    import dlcore
    from dlcore.crf import DenseCRF
    from dlcore.engine import predict_probs
    from dlcore.metrics import ConfusionMatrix

    dev = dlcore.resolve_device(device) if isinstance(device, str) else torch.device(device)
    grid = list(itertools.product(w1, sigma_alpha, sigma_beta))
    if not grid:
        raise ValueError("the CRF grid is empty: give at least one value each for w1, sigma_alpha, sigma_beta")
    num_classes = dataset.num_classes
    cms = [ConfusionMatrix(num_classes) for _ in grid]
    plain = ConfusionMatrix(num_classes)
    crfs = [DenseCRF(iterations, w1=a, sigma_alpha=b, sigma_beta=c, w2=w2, sigma_gamma=sigma_gamma).to(dev)
            for a, b, c in grid]
    model = model.to(dev).eval()
    indices = heldout_indices(len(dataset), n_heldout)
    for i in tqdm(indices, desc="crf-search", disable=not progress):
        image, target = dataset[i]
        probs = predict_probs(model, image, device=dev, normalize=normalize)
        plain.update(probs.argmax(0), target)
        image_d, probs_d = image.to(dev)[None], probs.to(dev)[None]
        with torch.inference_mode():
            for crf, cm in zip(crfs, cms):
                cm.update(crf(image_d, probs_d)[0].argmax(0).cpu(), target)
    rows = [dict(w1=a, sigma_alpha=b, sigma_beta=c, miou=cm.scores()["miou"]) for (a, b, c), cm in zip(grid, cms)]
    best = max(rows, key=lambda r: r["miou"])
    return {"rows": rows, "best": best, "no_crf": plain.scores()["miou"], "images": len(indices),
            "w2": w2, "sigma_gamma": sigma_gamma, "iterations": iterations}


def format_crf_search(result: dict) -> str:
    """The search as a table (mIoU %), best row marked, and the best setting in one line."""
    lines = [f"CRF search on {result['images']} held-out images (w2 = {result['w2']:g}, sigma_gamma = "
             f"{result['sigma_gamma']:g}, {result['iterations']} iterations); network alone: "
             f"{100 * result['no_crf']:.2f}% mIoU", "",
             "| w1 | sigma_alpha | sigma_beta | mIoU |", "| --- | --- | --- | --- |"]
    for r in result["rows"]:
        mark = " **best**" if r is result["best"] else ""
        lines.append(f"| {r['w1']:g} | {r['sigma_alpha']:g} | {r['sigma_beta']:g} | {100 * r['miou']:.2f}{mark} |")
    b = result["best"]
    lines += ["", f"best: w1={b['w1']:g} sigma_alpha={b['sigma_alpha']:g} sigma_beta={b['sigma_beta']:g} "
                  f"w2={result['w2']:g} sigma_gamma={result['sigma_gamma']:g} -> {100 * b['miou']:.2f}% mIoU "
                  f"({100 * (b['miou'] - result['no_crf']):+.2f} over the network alone)"]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# CLI: python -m dlcore crf-search
# --------------------------------------------------------------------------------------------------

def add_crf_search_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model name the checkpoint is for (see dlcore.models.available())")
    parser.add_argument("--checkpoint", required=True, help="a dlcore checkpoint (train / import-caffe)")
    parser.add_argument("--data", choices=("voc", "synthetic"), default="voc", help="held-out images from VOC val or SyntheticScenes val")
    parser.add_argument("--root", default=None, help="VOC folder (with VOCdevkit/VOC2012); needed for --data voc")
    parser.add_argument("--split", default="val", help="VOC split to hold images out of (default val, as the papers)")
    parser.add_argument("--size", type=int, default=128, help="SyntheticScenes image size (--data synthetic)")
    parser.add_argument("--n-heldout", type=int, default=100, help="held-out images (papers: 100)")
    parser.add_argument("--w1", type=float, nargs="+", default=[3, 4, 5], help="appearance kernel weights to try")
    parser.add_argument("--sigma-alpha", type=float, nargs="+", default=[30, 50, 80, 121], help="appearance kernel spatial widths")
    parser.add_argument("--sigma-beta", type=float, nargs="+", default=[3, 5, 10], help="appearance kernel colour widths")
    parser.add_argument("--w2", type=float, default=3.0, help="smoothness kernel weight (fixed, papers: 3)")
    parser.add_argument("--sigma-gamma", type=float, default=3.0, help="smoothness kernel width (fixed, papers: 3)")
    parser.add_argument("--iterations", type=int, default=10, help="mean-field iterations (papers: 10)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from dlcore.io import add_debug_argument

    add_debug_argument(parser)


def run_crf_search(args) -> int:
    from dlcore.io import command_error

    try:
        return _run_crf_search(args)
    except Exception as e:  # one line, exit 2 for bad input, 1 for a failure while running (docs/reliability.md)
        return command_error("crf-search", e, args)


def _run_crf_search(args) -> int:
    from dlcore.checkpoint import check_num_classes, parse_device
    from dlcore.crf import DenseCRF
    from dlcore.engine import load_checkpoint, load_model, open_voc

    # the arguments first, before any data or network is loaded
    parse_device(args.device)
    if args.n_heldout < 1:
        raise ValueError(f"--n-heldout must be >= 1 held-out image (papers: 100), got {args.n_heldout}")
    for a, b, c in itertools.product(args.w1, args.sigma_alpha, args.sigma_beta):
        DenseCRF(args.iterations, w1=a, sigma_alpha=b, sigma_beta=c, w2=args.w2, sigma_gamma=args.sigma_gamma)
    if args.data == "voc":
        if not args.root:
            raise ValueError("--data voc needs --root DIR (the folder holding VOCdevkit/VOC2012)")
        dataset, description = open_voc(args.root, args.split), f"VOC {args.split}"
    else:
        from dlcore.data import SyntheticScenes

        dataset, description = SyntheticScenes(split="val", n=args.n_heldout, size=args.size), "synthetic val"
    checkpoint = load_checkpoint(args.checkpoint)
    model = load_model(checkpoint, name=args.model, device="cpu")
    check_num_classes(checkpoint, dataset.num_classes, description)  # the same check as eval
    result = crf_search(model, dataset, n_heldout=args.n_heldout, w1=args.w1, sigma_alpha=args.sigma_alpha,
                        sigma_beta=args.sigma_beta, w2=args.w2, sigma_gamma=args.sigma_gamma,
                        iterations=args.iterations, device=args.device, normalize=checkpoint_normalize(checkpoint),
                        progress=not args.no_progress)
    print(format_crf_search(result))
    return 0
