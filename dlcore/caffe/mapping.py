"""The Caffe layer mapping: the published DeepLab / FCN prototxts' layer names onto dlcore's modules.

`import_caffe(model, layers)` copies the layers that `dlcore.caffe.proto.read_caffemodel` read into a dlcore
model, every shape checked, and `export_caffe` is its inverse:

    DeepLab v1 / v2 VGG-16  conv1_1 .. conv5_3, fc6, fc7, fc8_<dataset> (v2 ASPP: fc6_i, fc7_i, fc8_<dataset>_i)
    DeepLab v2 ResNet-101   conv1 + bn_conv1 + scale_conv1, res2a_branch1 / _branch2a,b,c (+ bn*, scale*) ...
                            res4b1 .. res4b22, res5a .. c, ASPP fc1_<dataset>_c0 .. c3 (rates 6, 12, 18, 24)

Caffe's batch norm is two layers: `BatchNorm` keeps running sums (mean, variance, scale_factor) and divides
mean and variance by the scale factor (when it is non-zero) at test time; the following `Scale` layer is the
affine weight and bias. Both fold into one `nn.BatchNorm2d`. Caffe's BatchNorm eps is 1e-5, as torch's
default, so the folded layer computes the same function (DeepLab v2's prototxts keep Caffe's default).

The Caffe models take BGR images minus the Caffe mean (104.008, 116.669, 122.675) in 0..255, so the
checkpoints made from them record `normalize="caffe"` and `eval` / `segment` / `Predictor` use
`dlcore.data.transforms.normalize(mode="caffe")` for them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from dlcore.caffe.proto import read_caffemodel

# --------------------------------------------------------------------------------------------------
# Mapping Caffe layers onto dlcore models
# --------------------------------------------------------------------------------------------------

# DeepLab v2's MSC prototxts repeat every layer per input scale with shared weights ("conv1_res075",
# "fc1_voc12_c0_res05"); the caffemodel stores each copy. They equal the scale-1 layer and are skipped.
_MSC_COPY = re.compile(r"_res0\d+$")
_CLASSIFIER_PREFIXES = ("fc8", "fc1_", "score")


@dataclass
class CaffeEntry:
    """One Caffe layer (or BatchNorm + Scale pair) and the dlcore module it fills."""

    caffe: str
    kind: str  # "conv" | "deconv" | "bn"
    module: object
    target: str  # the dlcore module path, for messages
    scale: str | None = None  # the Scale layer of a "bn" entry
    classifier: bool = False

    @property
    def caffe_layers(self) -> list[str]:
        return [self.caffe] + ([self.scale] if self.scale else [])


def _vgg_entries(trunk, prefix: str) -> list[CaffeEntry]:
    """conv1_1 .. conv5_3 in VGG-16's order (a new block after each max-pool)."""
    from torch import nn

    out, block, i = [], 1, 0
    for idx, m in enumerate(trunk.features):
        if isinstance(m, nn.MaxPool2d):
            block, i = block + 1, 0
        elif isinstance(m, nn.Conv2d):
            i += 1
            out.append(CaffeEntry(f"conv{block}_{i}", "conv", m, f"{prefix}features.{idx}"))
    return out


def _resnet_block_name(stage: int, index: int, n_blocks: int) -> str:
    """Caffe ResNet-101 block names: res2a..c, res3a, res3b1..b3, res4a, res4b1..b22, res5a..c."""
    if n_blocks <= 3:
        return f"{stage}{'abc'[index]}"
    return f"{stage}a" if index == 0 else f"{stage}b{index}"


def _resnet_entries(trunk, prefix: str) -> list[CaffeEntry]:
    out = [CaffeEntry("conv1", "conv", trunk.conv1, f"{prefix}conv1"),
           CaffeEntry("bn_conv1", "bn", trunk.bn1, f"{prefix}bn1", scale="scale_conv1")]
    for stage, layer_name in zip((2, 3, 4, 5), ("layer1", "layer2", "layer3", "layer4")):
        layer = getattr(trunk, layer_name)
        for i, block in enumerate(layer):
            b = _resnet_block_name(stage, i, len(layer))
            where = f"{prefix}{layer_name}.{i}"
            if block.downsample is not None:
                out += [CaffeEntry(f"res{b}_branch1", "conv", block.downsample[0], f"{where}.downsample.0"),
                        CaffeEntry(f"bn{b}_branch1", "bn", block.downsample[1], f"{where}.downsample.1",
                                   scale=f"scale{b}_branch1")]
            for k, branch in zip((1, 2, 3), ("2a", "2b", "2c")):
                out += [CaffeEntry(f"res{b}_branch{branch}", "conv", getattr(block, f"conv{k}"), f"{where}.conv{k}"),
                        CaffeEntry(f"bn{b}_branch{branch}", "bn", getattr(block, f"bn{k}"), f"{where}.bn{k}",
                                   scale=f"scale{b}_branch{branch}")]
    return out


def caffe_plan(model, dataset: str = "voc12") -> list[CaffeEntry]:
    """The Caffe layer names of the published prototxts for `model`, in network order.

    VGG-16 trunk: conv1_1 .. conv5_3. FCN: fc6, fc7, score_fr, score_pool4, score_pool3 and the Deconvolution
    layers upscore / upscore2 / upscore16 / upscore_pool4 / upscore8 (fcn.berkeleyvision.org). DeepLab v1 and
    v2 VGG LargeFOV: fc6, fc7, fc8_<dataset>; v2 VGG ASPP: fc6_<i>, fc7_<i>, fc8_<dataset>_<i>, i = 1..4.
    ResNet-101: conv1 / bn_conv1 / scale_conv1, res<b>_branch1|2a|2b|2c with bn<b>_* and scale<b>_*; ASPP
    fc1_<dataset>_c0..c3 (one branch: fc1_<dataset>). `dataset` is the suffix of the class-score layers
    ("voc12", "coco"). DeepLab v1's MSc models are not mapped (ValueError).
    """
    from dlcore.backbones import ResNet101, VGG16
    from dlcore.heads import ASPP, DeepLabV1Head, FCNHead

    backbone, head = getattr(model, "backbone", None), getattr(model, "head", None)
    if isinstance(backbone, VGG16):
        if getattr(backbone, "batch_norm", False):
            raise ValueError("the published Caffe VGG-16 models have no batch norm; build the model without "
                             "batch_norm=True to import one")
        plan = _vgg_entries(backbone, "backbone.")
    elif isinstance(backbone, ResNet101):
        plan = _resnet_entries(backbone, "backbone.")
    else:
        raise ValueError(f"{type(model).__name__} has no VGG16 / ResNet101 `backbone`: build it with "
                         "dlcore.models.build_model")
    if isinstance(head, FCNHead):
        plan += [CaffeEntry("fc6", "conv", head.fc6, "head.fc6"), CaffeEntry("fc7", "conv", head.fc7, "head.fc7"),
                 CaffeEntry("score_fr", "conv", head.score_fr, "head.score_fr", classifier=True)]
        for name in ("upscore", "upscore2", "score_pool4", "upscore16", "score_pool3", "upscore_pool4", "upscore8"):
            if hasattr(head, name):
                kind = "deconv" if name.startswith("upscore") else "conv"
                plan.append(CaffeEntry(name, kind, getattr(head, name), f"head.{name}", classifier=kind == "conv"))
    elif isinstance(head, DeepLabV1Head):
        if head.msc is not None:
            raise ValueError("Caffe import of DeepLab v1's MSc models is not mapped (their MLP layer names are not "
                             "in dlcore's table); import the single-scale model, e.g. --model deeplab-v1-largefov")
        plan += [CaffeEntry("fc6", "conv", head.fc6, "head.fc6"), CaffeEntry("fc7", "conv", head.fc7, "head.fc7"),
                 CaffeEntry(f"fc8_{dataset}", "conv", head.fc8, "head.fc8", classifier=True)]
    elif isinstance(head, ASPP):
        many = len(head.branches) > 1
        for i, branch in enumerate(head.branches):
            where = f"head.branches.{i}"
            if isinstance(backbone, VGG16):
                s = f"_{i + 1}" if many else ""
                plan += [CaffeEntry(f"fc6{s}", "conv", branch[0], f"{where}.0"),
                         CaffeEntry(f"fc7{s}", "conv", branch[3], f"{where}.3"),
                         CaffeEntry(f"fc8_{dataset}{s}", "conv", branch[6], f"{where}.6", classifier=True)]
            else:
                s = f"_c{i}" if many else ""
                plan.append(CaffeEntry(f"fc1_{dataset}{s}", "conv", branch[0], f"{where}.0", classifier=True))
    else:
        raise ValueError(f"no Caffe layer names known for the head {type(head).__name__}")
    return plan


def _strip_ones(shape) -> tuple:
    shape = tuple(shape)
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return shape


def _fit(blob: np.ndarray, param, caffe: str, i: int, target: str):
    """blob as a tensor of `param`'s shape; legacy 4-D blobs (1, 1, 1, n) fit an [n] bias. Else ValueError."""
    import torch

    want = tuple(param.shape)
    if not np.isfinite(blob).all():  # a NaN weight gives one class everywhere, with no error at all
        raise ValueError(f"caffe layer {caffe!r} blob {i} holds NaN or Inf values; the file is damaged or from a "
                         "diverged run: download it again")
    if blob.shape != want:
        if blob.size != int(np.prod(want)) or _strip_ones(blob.shape) != _strip_ones(want):
            raise ValueError(f"caffe layer {caffe!r} blob {i} has shape {blob.shape}, but dlcore parameter {target} "
                             f"has shape {want}: the file is for another architecture, width or number of classes "
                             f"(--num-classes, or --backbone-only for an ImageNet/COCO init model)")
        blob = blob.reshape(want)
    return torch.from_numpy(np.ascontiguousarray(blob, dtype=np.float32))


def _entry_tensors(entry: CaffeEntry, layers: dict) -> list[tuple[object, object]]:
    """(parameter or buffer, new value) pairs for one entry, every shape checked; nothing assigned yet."""
    import torch

    m, blobs = entry.module, layers[entry.caffe]
    if entry.kind == "bn":
        if len(blobs) != 3:
            raise ValueError(f"caffe BatchNorm layer {entry.caffe!r} has {len(blobs)} blobs; expected 3 "
                             "(mean, variance, scale factor)")
        factor = float(np.asarray(blobs[2]).reshape(-1)[0])
        # Caffe's BatchNorm keeps running *sums* and divides by the factor at test time (0 -> statistics unused).
        inv = 0.0 if factor == 0 else 1.0 / factor
        mean = _fit(blobs[0] * inv, m.running_mean, entry.caffe, 0, f"{entry.target}.running_mean")
        var = _fit(blobs[1] * inv, m.running_var, entry.caffe, 1, f"{entry.target}.running_var")
        scale = layers[entry.scale]
        gamma = _fit(scale[0], m.weight, entry.scale, 0, f"{entry.target}.weight")
        beta = (_fit(scale[1], m.bias, entry.scale, 1, f"{entry.target}.bias") if len(scale) > 1
                else torch.zeros_like(m.bias))
        return [(m.running_mean, mean), (m.running_var, var), (m.weight, gamma), (m.bias, beta)]
    weight = blobs[0]
    if entry.kind == "deconv" and m.groups > 1 and weight.ndim == 4 and weight.shape[:2] == (m.groups, m.groups):
        # FCN's Caffe upsampling is a full C x C deconvolution holding the bilinear kernel on its diagonal;
        # dlcore's is grouped (one kernel per class). Refuse anything that mixes classes.
        diag = weight[np.arange(m.groups), np.arange(m.groups)]
        off = weight.copy()
        off[np.arange(m.groups), np.arange(m.groups)] = 0
        if np.abs(off).max() > 0:
            raise ValueError(f"caffe layer {entry.caffe!r} mixes classes (non-zero off-diagonal kernels); dlcore's "
                             f"{entry.target} upsamples each class on its own")
        weight = diag[:, None]
    pairs = [(m.weight, _fit(weight, m.weight, entry.caffe, 0, f"{entry.target}.weight"))]
    has_bias = getattr(m, "bias", None) is not None
    if len(blobs) != 1 + has_bias:
        raise ValueError(f"caffe layer {entry.caffe!r} has {len(blobs)} blobs, dlcore's {entry.target} needs "
                         f"{1 + has_bias} ({'weight and bias' if has_bias else 'weight only'})")
    if has_bias:
        pairs.append((m.bias, _fit(blobs[1], m.bias, entry.caffe, 1, f"{entry.target}.bias")))
    return pairs


def _detect_dataset(names) -> str | None:
    """The class-score suffix used in a file ('voc12', 'coco'): fc8_<ds>[_i] or fc1_<ds>[_c<i>]."""
    found = set()
    for n in names:
        m = re.fullmatch(r"fc8_([A-Za-z]\w*?)(_\d+)?", n) or re.fullmatch(r"fc1_([A-Za-z]\w*?)(_c\d+)?", n)
        if m:
            found.add(m.group(1))
    if len(found) > 1:
        raise ValueError(f"the file has class-score layers for several datasets {sorted(found)}; pass dataset=")
    return found.pop() if found else None


def import_caffe(model, layers, *, dataset: str | None = None, backbone_only: bool = False) -> dict:
    """Copy Caffe weights (a path or `read_caffemodel`'s dict) into `model`, every layer and shape checked.

    backbone_only: leave the class-score layers (fc8 / fc1_*_c* / score_*) at their init and ignore the file's
    own (an ImageNet- or COCO-initialisation model has another number of classes). Nothing is assigned unless
    the whole file fits. Returns {"layers", "parameters", "dataset", "skipped"}.
    """
    import torch

    if not isinstance(layers, dict):
        layers = read_caffemodel(layers)
    names = [n for n in layers if not _MSC_COPY.search(n)]
    copies = [n for n in layers if _MSC_COPY.search(n)]
    dataset = dataset or _detect_dataset(names) or "voc12"
    plan = caffe_plan(model, dataset)
    if backbone_only:
        plan = [e for e in plan if not e.classifier]
    expected = [n for e in plan for n in e.caffe_layers]
    missing = [n for n in expected if n not in layers]
    unexpected = [n for n in names if n not in set(expected)
                  and not (backbone_only and n.startswith(_CLASSIFIER_PREFIXES))]
    if missing or unexpected:
        name = getattr(model, "name", type(model).__name__)
        raise ValueError(
            f"the caffemodel does not fit {name}: {len(missing)} layer(s) missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, {len(unexpected)} unexpected {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}. Is it a file for another architecture (VGG-16 DeepLab-LargeFOV "
            f"has conv1_1 .. fc8_<dataset>; ResNet-101 DeepLab v2 has conv1, res2a_branch1 .. fc1_<dataset>_c0..3)?")
    pairs = [pair for e in plan for pair in _entry_tensors(e, layers)]  # all checked before any is written
    with torch.no_grad():
        for param, value in pairs:
            param.copy_(value)
    return {"layers": len(expected), "parameters": int(sum(v.numel() for _, v in pairs)), "dataset": dataset,
            "skipped": copies}


def export_caffe(model, *, dataset: str = "voc12", scale_factor: float = 1.0) -> list[tuple[str, str, list]]:
    """The inverse of `import_caffe`: [(layer name, type, [blobs])] for `write_caffemodel`, as Caffe stores them.

    BatchNorm layers hold mean and variance multiplied by `scale_factor` and the factor itself (Caffe's running
    sums); the Scale layer holds weight and bias. FCN deconvolutions are written grouped (C x 1 x k x k).
    """
    out = []
    for e in caffe_plan(model, dataset):
        m = e.module
        arr = lambda t: t.detach().cpu().float().numpy()  # noqa: E731
        if e.kind == "bn":
            out.append((e.caffe, "BatchNorm", [arr(m.running_mean) * scale_factor, arr(m.running_var) * scale_factor,
                                               np.array([scale_factor], np.float32)]))
            out.append((e.scale, "Scale", [arr(m.weight), arr(m.bias)]))
        else:
            blobs = [arr(m.weight)] + ([arr(m.bias)] if getattr(m, "bias", None) is not None else [])
            out.append((e.caffe, "Deconvolution" if e.kind == "deconv" else "Convolution", blobs))
    return out
