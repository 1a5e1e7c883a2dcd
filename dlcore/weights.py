"""Weight import: the published DeepLab Caffe models and torchvision's ImageNet backbones.

DeepLab v1 and v2 were released as Caffe models (`.caffemodel`, a protobuf `NetParameter`). Caffe is not
needed to read them: the file is protobuf wire format, and of its schema only a few fields matter here

    NetParameter       layer = 100 (LayerParameter), legacy layers = 2 (V1LayerParameter)
    LayerParameter     name = 1, type = 2 (string), blobs = 7 (BlobProto)
    V1LayerParameter   name = 4, type = 5 (enum), blobs = 6
    BlobProto          num/channels/height/width = 1..4 (legacy 4-D shape), data = 5 (packed float),
                       shape = 7 (BlobShape: dim = 1, packed int64), double_data = 8 (packed double)

so `read_caffemodel` is a small wire-format reader (varints and length-delimited fields; packed floats go
straight into NumPy with `np.frombuffer`, no per-float Python loop) and `write_caffemodel` its inverse, used
by the tests and notebook 08 to make small files with known values.

`import_caffe(model, layers)` then maps the Caffe layers onto a dlcore model by the published prototxts'
layer names, every shape checked:

    DeepLab v1 / v2 VGG-16  conv1_1 .. conv5_3, fc6, fc7, fc8_<dataset> (v2 ASPP: fc6_i, fc7_i, fc8_<dataset>_i)
    DeepLab v2 ResNet-101   conv1 + bn_conv1 + scale_conv1, res2a_branch1 / _branch2a,b,c (+ bn*, scale*) ...
                            res4b1 .. res4b22, res5a .. c, ASPP fc1_<dataset>_c0 .. c3 (rates 6, 12, 18, 24)

Caffe's batch norm is two layers: `BatchNorm` keeps running sums (mean, variance, scale_factor) and divides
mean and variance by the scale factor (when it is non-zero) at test time; the following `Scale` layer is the
affine weight and bias. Both fold into one `nn.BatchNorm2d`. Caffe's BatchNorm eps is 1e-5, as torch's
default, so the folded layer computes the same function (DeepLab v2's prototxts keep Caffe's default).

The Caffe models take BGR images minus the Caffe mean (104.008, 116.669, 122.675) in 0..255, so the
checkpoints written here record `normalize="caffe"` and `eval` / `segment` / `predict` use
`dlcore.data.transforms.normalize(mode="caffe")` for them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------------------------------
# Protobuf wire format (https://protobuf.dev/programming-guides/encoding/)
# --------------------------------------------------------------------------------------------------

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# V1LayerParameter.LayerType values (caffe.proto) for the layers that carry weights, for readable messages.
_V1_TYPES = {4: "Convolution", 14: "InnerProduct", 39: "Deconvolution", 0: "None"}


class _Truncated(Exception):
    """Raised inside the reader; turned into a ValueError naming the file."""


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Truncated(f"a varint runs past the end of its message at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Truncated(f"a varint longer than 10 bytes at byte {pos} (not protobuf)")


def _fields(buf, start: int, end: int):
    """Yield (field number, wire type, value) over one message; value is an int, or (start, end) for LEN."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Truncated(f"field number 0 at byte {pos} (not protobuf)")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
        elif wire == _LEN:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _Truncated(f"field {field} claims {n} bytes at byte {pos}, but only {end - pos} remain")
            value, pos = (pos, pos + n), pos + n
        elif wire == _I32 or wire == _I64:
            n = 4 if wire == _I32 else 8
            if pos + n > end:
                raise _Truncated(f"a {8 * n}-bit field {field} runs past the end at byte {pos}")
            value, pos = (pos, pos + n), pos + n
        else:
            raise _Truncated(f"wire type {wire} (field {field}) at byte {pos} is not one protobuf uses here")
        yield field, wire, value


def _packed_varints(buf, span) -> list[int]:
    out, pos = [], span[0]
    while pos < span[1]:
        v, pos = _varint(buf, pos, span[1])
        out.append(v)
    return out


def _read_blob(buf, start: int, end: int) -> np.ndarray:
    """BlobProto -> float32 array of its shape (BlobShape, or the legacy num/channels/height/width)."""
    legacy = {}
    shape = None
    chunks: list[np.ndarray] = []
    for field, wire, value in _fields(buf, start, end):
        if field in (1, 2, 3, 4) and wire == _VARINT:
            legacy[field] = value
        elif field in (5, 8):  # data (float) / double_data (double): packed, or one element per tag
            dtype = "<f4" if field == 5 else "<f8"
            a, b = value if wire != _VARINT else (0, 0)
            size = np.dtype(dtype).itemsize
            if (b - a) % size:
                raise _Truncated(f"blob data of {b - a} bytes is not a whole number of {dtype} values")
            chunks.append(np.frombuffer(buf, dtype=dtype, count=(b - a) // size, offset=a))
        elif field == 7 and wire == _LEN:
            shape = []
            for f2, w2, v2 in _fields(buf, *value):
                if f2 == 1:
                    shape.extend(_packed_varints(buf, v2) if w2 == _LEN else [v2])
    if shape is None:
        # Legacy blobs are 4-D (num, channels, height, width); InnerProduct weights are (1, 1, out, in).
        shape = [legacy.get(i, 0) for i in (1, 2, 3, 4)] if legacy else [0]
    data = np.concatenate(chunks) if len(chunks) > 1 else chunks[0] if chunks else np.zeros(0, np.float32)
    n = math.prod(shape)  # Python ints: np.prod wraps around at 2^64 (a [2^32, 2^32] blob would "hold" 0 values)
    if data.size != n:
        raise _Truncated(f"a blob holds {data.size} values for shape {tuple(shape)} ({n} expected)")
    return data.astype(np.float32).reshape(shape)  # astype copies: the arrays do not pin the file's bytes


def caffemodel_layers(path) -> list[tuple[str, str, list[np.ndarray]]]:
    """Every layer of a .caffemodel that carries blobs, in file order: (name, type, [float32 arrays])."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no caffemodel at {path}; give the path of a .caffemodel file")
    buf = path.read_bytes()
    layers = []
    try:
        for field, wire, value in _fields(buf, 0, len(buf)):
            if wire != _LEN or field not in (2, 100):
                continue
            v1 = field == 2
            name, kind, blobs = "", "", []
            for f, w, v in _fields(buf, *value):
                if f == (4 if v1 else 1) and w == _LEN:
                    name = bytes(buf[v[0]:v[1]]).decode("utf-8", "replace")
                elif f == (5 if v1 else 2):
                    kind = _V1_TYPES.get(v, f"V1 type {v}") if v1 else bytes(buf[v[0]:v[1]]).decode("utf-8", "replace")
                elif f == (6 if v1 else 7) and w == _LEN:
                    blobs.append(_read_blob(buf, *v))
            if blobs:
                layers.append((name, kind, blobs))
    except _Truncated as e:
        raise ValueError(f"{path} is not a readable .caffemodel (truncated or another format): {e}. "
                         "Download the file again and check its size / checksum") from None
    if not layers:
        raise ValueError(f"{path} holds no layers with weights: it is not a trained .caffemodel "
                         "(a .prototxt or a solverstate?); pass the .caffemodel file")
    return layers


def read_caffemodel(path) -> dict[str, list[np.ndarray]]:
    """{layer name: [blob arrays]} of a .caffemodel (weights first, then bias; BatchNorm: mean, var, factor)."""
    return {name: blobs for name, _, blobs in caffemodel_layers(path)}


# ---- writer: the inverse, for tests, notebook 08 and benchmarks -----------------------------------

def _enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _enc_len(field: int, payload: bytes) -> bytes:
    return _enc_varint(field << 3 | _LEN) + _enc_varint(len(payload)) + payload


def _enc_blob(array, legacy: bool, double: bool) -> bytes:
    a = np.asarray(array)
    data = a.astype("<f8" if double else "<f4").tobytes()
    out = b""
    if legacy:  # num/channels/height/width, padded with leading 1s to 4-D like Caffe's old blobs
        dims = (1,) * (4 - a.ndim) + a.shape if a.ndim <= 4 else None
        if dims is None:
            raise ValueError(f"a legacy blob is at most 4-D, got shape {a.shape}")
        out += b"".join(_enc_varint((i + 1) << 3 | _VARINT) + _enc_varint(d) for i, d in enumerate(dims))
    else:
        out += _enc_len(7, _enc_len(1, b"".join(_enc_varint(d) for d in a.shape)))
    return out + _enc_len(8 if double else 5, data)


def encode_caffemodel(layers, *, legacy: bool = False, double: bool = False, net_name: str = "dlcore") -> bytes:
    """NetParameter bytes for `layers`: a dict {name: [arrays]} or a list of (name, type, [arrays]).

    legacy=True writes the old `layers` field (V1LayerParameter, 4-D num/channels/height/width blobs);
    double=True writes `double_data` instead of `data`.
    """
    items = [(n, "", b) for n, b in layers.items()] if isinstance(layers, dict) else list(layers)
    out = [_enc_len(1, net_name.encode())]
    for name, kind, blobs in items:
        kind = kind or ("Convolution" if blobs and np.ndim(blobs[0]) == 4 else "")
        if legacy:
            v1_type = {v: k for k, v in _V1_TYPES.items()}.get(kind, 4)
            msg = _enc_len(4, name.encode()) + _enc_varint(5 << 3 | _VARINT) + _enc_varint(v1_type)
            msg += b"".join(_enc_len(6, _enc_blob(b, True, double)) for b in blobs)
            out.append(_enc_len(2, msg))
        else:
            msg = _enc_len(1, name.encode()) + _enc_len(2, kind.encode())
            msg += b"".join(_enc_len(7, _enc_blob(b, False, double)) for b in blobs)
            out.append(_enc_len(100, msg))
    return b"".join(out)


def write_caffemodel(path, layers, **options) -> Path:
    """Write `layers` ({name: [arrays]} or [(name, type, [arrays])]) as a .caffemodel, atomically."""
    path = Path(path)
    _atomic_write_bytes(path, encode_caffemodel(layers, **options))
    return path


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    from dlcore.io import atomic_write

    atomic_write(path, lambda f: f.write(data))


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


# --------------------------------------------------------------------------------------------------
# torchvision ImageNet weights
# --------------------------------------------------------------------------------------------------

def load_imagenet(model, weights="imagenet"):
    """ImageNet initialisation of a DeepLab v1/v2 or FCN model's trunk (and VGG's fc6/fc7), every shape checked.

    weights: "imagenet" (torchvision's IMAGENET1K_V1 for the model's trunk; downloaded once by torchvision),
    a torchvision weights enum, a path to a saved torchvision state dict, or a state dict. FCN's fc6/fc7 are
    VGG-16's classifier convolutionalized (FCN Sec. 3.1); DeepLab's are subsampled (DeepLab v1 Sec. 4.1).
    Delegates to `dlcore.backbones.load_torchvision_weights`; returns `model`.
    """
    from dlcore.backbones import imagenet_weights, load_torchvision_weights

    if isinstance(weights, str) and weights == "imagenet":
        trunk = getattr(model, "backbone", model)
        weights = imagenet_weights(trunk)
    return load_torchvision_weights(model, weights)


# --------------------------------------------------------------------------------------------------
# CLI: python -m dlcore import-caffe FILE.caffemodel --model NAME --out OUT.pt
# --------------------------------------------------------------------------------------------------

def paper_crf(name: str) -> dict | None:
    """The released CRF settings for a model family (DeepLab v1 LargeFOV, v2 ResNet-101), else None."""
    from dlcore.crf import DEEPLAB_V1_LARGEFOV, DEEPLAB_V2_RESNET101

    if "resnet101" in name:
        return dict(DEEPLAB_V2_RESNET101)
    if name.startswith("deeplab"):
        return dict(DEEPLAB_V1_LARGEFOV)
    return None


def add_import_caffe_arguments(parser) -> None:
    parser.add_argument("caffemodel", metavar="FILE.caffemodel", help="a published DeepLab / FCN .caffemodel")
    parser.add_argument("--model", required=True, help="dlcore model name, e.g. deeplab-v1-largefov or "
                        "deeplab-v2-resnet101-aspp-l-msc (python -c 'import dlcore.models as m; print(m.available())')")
    parser.add_argument("--out", required=True, help="the dlcore checkpoint to write (e.g. largefov.pt)")
    parser.add_argument("--num-classes", type=int, default=21, help="classes of the file's score layer (21 for VOC)")
    parser.add_argument("--dataset", default=None,
                        help="suffix of the class-score layers (fc8_<dataset>, fc1_<dataset>_c0); default: found in the file")
    parser.add_argument("--backbone-only", action="store_true",
                        help="import all but the class-score layers (ImageNet / COCO initialisation models)")
    parser.add_argument("--output-stride", type=int, default=None, help="ResNet-101 models: 8 (default) or 16")
    parser.add_argument("--freeze-bn", action="store_true", help="ResNet-101 models: batch norm frozen when fine-tuned")
    parser.add_argument("--width", type=float, default=1.0,
                        help="channel width (1.0 for the published models; smaller only for test files)")
    from dlcore.io import add_debug_argument

    add_debug_argument(parser)


def run_import_caffe(args) -> int:
    from dlcore.io import command_error

    try:
        return _run_import_caffe(args)
    except Exception as e:  # one line, exit 2 for bad input, 1 for a failure while running (docs/reliability.md)
        return command_error("import-caffe", e, args)


def _run_import_caffe(args) -> int:
    from dlcore.checkpoint import checkpoint_meta, save_checkpoint
    from dlcore.io import check_output_file
    from dlcore.models import build_model

    # the output first: it must not be the input (that would replace the caffemodel), nor a folder
    source, out = Path(args.caffemodel), Path(args.out)
    if out.resolve() == source.resolve():
        raise ValueError(f"--out {out} is the input caffemodel itself; write the checkpoint to another file "
                         f"(e.g. {source.with_suffix('.pt')})")
    check_output_file(out, "--out")
    options = {}
    if args.output_stride is not None:
        options["output_stride"] = args.output_stride
    if args.freeze_bn:
        options["freeze_bn"] = True
    if "resnet101" in args.model:
        options["caffe"] = True  # the released weights were trained with Caffe's strides and pool1
    layers = read_caffemodel(source)  # read (and checked) before the network is built
    model = build_model(args.model, num_classes=args.num_classes, width=args.width, **options)
    try:
        report = import_caffe(model, layers, dataset=args.dataset, backbone_only=args.backbone_only)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    meta = checkpoint_meta(model, normalize="caffe", meta={
        "source": f"caffe:{source.name}", "data": {"data": "voc"},
        "crf": paper_crf(args.model), "backbone_only": bool(args.backbone_only)})
    save_checkpoint(out, model=model.state_dict(), step=0, meta=meta)
    print(f"import-caffe: {report['layers']} Caffe layers ({report['parameters'] / 1e6:.1f}M values) -> {out} "
          f"({args.model}, {args.num_classes} classes, BGR Caffe-mean input: normalize='caffe')")
    if report["skipped"]:
        print(f"  skipped {len(report['skipped'])} MSC shared-weight copies (*_res075, *_res05)")
    return 0
