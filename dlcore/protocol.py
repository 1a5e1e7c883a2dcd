"""The papers' published tables on PASCAL VOC, and the reports that set measured numbers beside them.

The protocol (FCN Sec. 4-5; DeepLab v1 Sec. 5; DeepLab v2 Sec. 4): train on "trainaug" (VOC 2012 train plus
the SBD annotations, 10,582 images), evaluate on VOC 2012 val (1,449 images) at full resolution, label 255
(the void band around objects) ignored, mean IoU over the 21 classes (`dlcore.inference.evaluate_voc`).
Options the papers add at test time: multi-scale inputs, left-right flipping and the fully connected CRF,
whose parameters are cross-validated on held-out val images (`dlcore.crf.search`).

The published numbers are `TABLES` (each with its source; each row's `Recipe` names the dlcore model that
reproduces it and whether the CRF is on), and `paper_vs_measured` shows a table beside measured columns,
which read "not run" until an evaluation fills them. `per_class_table` prints per-class IoU as the
papers' result tables do (one row per method, one column per class, mean last).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from dlcore.data.voc import VOC_CLASSES

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
class Recipe:
    """How dlcore reproduces a table row: the `dlcore.models` name (None: a network dlcore does not build),
    whether the fully connected CRF is on, and a note on what else the row needs (e.g. "COCO init")."""

    model: str | None
    crf: bool = False
    note: str = ""


@dataclass(frozen=True)
class PaperTable:
    """A published table: `rows` are (row name exactly as printed, values in % for `columns`).

    columns: (key, header) pairs; key is the `dlcore.metrics.scores` key a measured value is compared with
    ("miou", "pixel_acc", "mean_acc", "fwiou"; "miou_crf" for the after-CRF column). `recipes`:
    {row name: `Recipe`}, how each row maps onto dlcore (model name and CRF).
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
            recipes={"DeepLab": Recipe("deeplab-v1-4x4"),
                     "DeepLab-CRF": Recipe("deeplab-v1-4x4", crf=True),
                     "DeepLab-MSc": Recipe("deeplab-v1-4x4-msc"),
                     "DeepLab-MSc-CRF": Recipe("deeplab-v1-4x4-msc", crf=True),
                     "DeepLab-7x7": Recipe("deeplab-v1-7x7"),
                     "DeepLab-CRF-7x7": Recipe("deeplab-v1-7x7", crf=True),
                     "DeepLab-LargeFOV": Recipe("deeplab-v1-largefov"),
                     "DeepLab-CRF-LargeFOV": Recipe("deeplab-v1-largefov", crf=True),
                     "DeepLab-MSc-LargeFOV": Recipe("deeplab-v1-largefov-msc"),
                     "DeepLab-MSc-CRF-LargeFOV": Recipe("deeplab-v1-largefov-msc", crf=True)},
        ),
        PaperTable(
            key="deeplab_v1_table2",
            title="DeepLab v1 Table 2: field of view, VOC 2012 val mean IoU after the CRF",
            source=f"{DEEPLAB_V1}, Table 2", split="val",
            columns=(("miou_crf", "mean IoU (after CRF)"),),
            rows=(("DeepLab-CRF-7x7", (67.64,)), ("DeepLab-CRF", (63.74,)), ("DeepLab-CRF-4x4", (67.14,)),
                  ("DeepLab-CRF-LargeFOV", (67.64,))),
            recipes={"DeepLab-CRF-7x7": Recipe("deeplab-v1-7x7", crf=True),
                     "DeepLab-CRF": Recipe("deeplab-v1-4x4", crf=True),
                     "DeepLab-CRF-4x4": Recipe("deeplab-v1-4x4-r8", crf=True),
                     "DeepLab-CRF-LargeFOV": Recipe("deeplab-v1-largefov", crf=True)},
            note="kernel 7x7 / 4x4 / 4x4 / 3x3 at input stride 4 / 4 / 8 / 12; mean IoU after the CRF and training "
                 "speed (images/s) on VOC 2012 val, as the caption says",
        ),
        PaperTable(
            key="deeplab_v1_test", title="DeepLab v1 Table 1(b): VOC 2012 test, mean IoU",
            source=f"{DEEPLAB_V1}, Table 1(b)", split="test",
            columns=(("miou_crf", "mean IoU"),),
            rows=(("DeepLab-CRF", (66.4,)), ("DeepLab-MSc-CRF", (67.1,)), ("DeepLab-CRF-7x7", (70.3,)),
                  ("DeepLab-CRF-LargeFOV", (70.3,)), ("DeepLab-MSc-CRF-LargeFOV", (71.6,))),
            recipes={"DeepLab-MSc-CRF-LargeFOV": Recipe("deeplab-v1-largefov-msc", crf=True)},
            note="test labels are withheld: submit to the PASCAL evaluation server",
        ),
        PaperTable(
            key="deeplab_v2_table3",
            title="DeepLab v2 Table 3: ASPP with VGG-16, VOC 2012 val mean IoU before / after the CRF",
            source=f"{DEEPLAB_V2}, Table 3", split="val",
            columns=(("miou", "before CRF"), ("miou_crf", "after CRF")),
            rows=(("LargeFOV", (65.76, 69.84)), ("ASPP-S", (66.98, 69.73)), ("ASPP-L", (68.96, 71.57))),
            recipes={"LargeFOV": Recipe("deeplab-v2-vgg-largefov"),
                     "ASPP-S": Recipe("deeplab-v2-vgg-aspp-s"),
                     "ASPP-L": Recipe("deeplab-v2-vgg-aspp-l")},
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
            recipes={"ResNet-101": Recipe(None, note="baseline ResNet-101 head (not in dlcore; closest: "
                                                       "deeplab-v2-resnet101-largefov)"),
                     "+ MSC": Recipe(None, note="baseline head + MSC (not in dlcore; closest: "
                                                  "deeplab-v2-resnet101-largefov-msc)"),
                     "+ MSC + COCO": Recipe(None, note="baseline head + MSC, COCO init (not in dlcore)"),
                     "+ MSC + COCO + Aug": Recipe(None, note="baseline head + MSC, COCO init, scale augmentation "
                                                               "(not in dlcore)"),
                     "+ MSC + COCO + Aug + LargeFOV": Recipe("deeplab-v2-resnet101-largefov-msc", note="COCO init"),
                     "+ MSC + COCO + Aug + ASPP": Recipe("deeplab-v2-resnet101-aspp-l-msc",
                                                         note="COCO init: the released train_iter_20000.caffemodel"),
                     "+ MSC + COCO + Aug + ASPP + CRF": Recipe("deeplab-v2-resnet101-aspp-l-msc", crf=True,
                                                               note="COCO init")},
            note="the paper's columns are ticks MSC / COCO / Aug / LargeFOV / ASPP / CRF; 'Aug' is random input "
                 "rescaling 0.5-1.5 during training, 'COCO' pre-training on MS-COCO; the rows are written as "
                 "the ticked columns",
        ),
        PaperTable(
            key="deeplab_v2_test", title="DeepLab v2 Table 5: VOC 2012 test, mean IoU",
            source=f"{DEEPLAB_V2}, Table 5", split="test",
            columns=(("miou_crf", "mean IoU"),),
            rows=(("DeepLab-CRF-LargeFOV-COCO", (72.7,)), ("DeepLab-CRF (ResNet-101)", (79.7,))),
            recipes={"DeepLab-CRF (ResNet-101)": Recipe("deeplab-v2-resnet101-aspp-l-msc", crf=True,
                                                       note="COCO init, fine-tuned on trainval: the released "
                                                            "train2_iter_20000.caffemodel")},
            note="the paper's two DeepLab rows of the 19 in Table 5 (the others are other methods); 'DeepLab-CRF "
                 "(ResNet-101)' is ResNet-101 + ASPP-L + MSC + COCO + CRF; test labels are withheld (evaluation "
                 "server)",
        ),
        PaperTable(
            key="fcn_table2", title="FCN Table 2: skip FCNs, PASCAL VOC 2011 reduced val (736 images)",
            source=f"{FCN}, Table 2", split="seg11valid",
            columns=(("pixel_acc", "pixel acc."), ("mean_acc", "mean acc."), ("miou", "mean IU"), ("fwiou", "f.w. IU")),
            rows=(("FCN-32s-fixed", (83.0, 59.7, 45.4, 72.0)), ("FCN-32s", (89.1, 73.3, 59.4, 81.4)),
                  ("FCN-16s", (90.0, 75.7, 62.4, 83.0)), ("FCN-8s", (90.3, 75.9, 62.7, 83.2))),
            recipes={"FCN-32s": Recipe("fcn32s"),
                     "FCN-16s": Recipe("fcn16s"),
                     "FCN-8s": Recipe("fcn8s")},
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


def paper_vs_measured(table: PaperTable | str, measured: dict | None = None, *, measured_label: str = "measured") -> str:
    """A markdown table: the paper's columns beside the measured ones ("not run" where nothing was measured).

    measured_label heads the measured columns: say what they were measured on when it is not the table's data
    (e.g. "ours, synthetic scenes": same protocol, other images, so the levels are not comparable).

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
    head = ["method"] + [f"paper {h}" for _, h in table.columns] + [f"{measured_label} {h}" for _, h in table.columns]
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

    A row counts when its recipe's model is `model_name` (the recipe's note, such as "COCO init", is the user's
    to honour); rows needing heads dlcore lacks or the test server stay "not run". scores / scores_crf:
    `dlcore.metrics.scores` of the network alone and with the CRF on VOC 2012 val.
    """
    out: dict = {}
    for table in TABLES.values():
        if table.split == "test":
            continue
        for row, recipe in table.recipes.items():
            if recipe.model != model_name:  # the note (e.g. "COCO init") is the user's to honour
                continue
            crf = recipe.crf
            entry = {}
            if scores is not None and not crf:
                entry.update({k: scores[k] for k in ("pixel_acc", "mean_acc", "miou", "fwiou") if k in scores})
            if scores_crf is not None and (crf or any(k == "miou_crf" for k, _ in table.columns)):
                entry["miou_crf"] = scores_crf["miou"]
            if entry:
                out.setdefault(table.key, {})[row] = entry
    return out
