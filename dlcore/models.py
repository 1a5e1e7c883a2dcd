"""`build_model(name, ...)` for every network of the three papers, the multi-scale (MSC) model, `fov_table()`.

    fcn32s fcn16s fcn8s                                         FCN (Long et al. 2015)
    deeplab-v1-7x7 -4x4 -4x4-r8 -largefov (+ -msc)              DeepLab v1 (Chen et al. 2015), Table 2
    deeplab-v2-vgg-largefov -aspp-s -aspp-l (+ -msc)            DeepLab v2 (Chen et al. 2017), VGG-16
    deeplab-v2-resnet101-largefov -aspp-l (+ -msc)              DeepLab v2, ResNet-101

Every model maps normalized images [B,3,H,W] to logits [B,num_classes,H,W] at the input size and carries
`name`, `num_classes`, `width`, `options`, `output_stride` and `classifier_parameters()` (the 10x-learning-rate
layers). On v1, `-msc` is the paper's MSc (multi-scale *features*, Sec. 4.3); on v2 it is MSC, multi-scale
*inputs* (Sec. 3.2): the same net on the image at scales 0.5, 0.75 and 1.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from dlcore.atrous import layer_geometry, receptive_field
from dlcore.backbones import ResNet101, VGG16, check_width
from dlcore.heads import ASPP, DeepLabV1Head, FCNHead, resnet_branch, vgg_branch
from dlcore.imagenet import imagenet_weights, load_torchvision_weights

__all__ = ["build_model", "available", "fov_table", "FCN", "DeepLab", "MSC"]

# DeepLab v1 Table 2: fc6 kernel, rate (input stride) and channels of each field-of-view variant.
V1_FC6 = {"7x7": (7, 4, 4096), "4x4": (4, 4, 4096), "4x4-r8": (4, 8, 4096), "largefov": (3, 12, 1024)}
# DeepLab v2 Sec. 3.2 / 4.1: the ASPP rates (LargeFOV = one branch at rate 12).
V2_RATES = {"largefov": (12,), "aspp-s": (2, 4, 8, 12), "aspp-l": (6, 12, 18, 24)}
V2_HEADS = {"vgg": ("largefov", "aspp-s", "aspp-l"), "resnet101": ("largefov", "aspp-l")}
MSC_SCALES = (0.5, 0.75, 1.0)


class FCN(nn.Module):
    """FCN-32s/16s/8s (Long et al. 2015): VGG-16 (output stride 32), `FCNHead`, logits at the input size.

    Alignment (the paper pads conv1_1 by 100 and crops the upsampled scores at offsets 19/27/31): here the
    input is zero-padded at the bottom and right to a multiple of 32 (zero = the mean colour after
    normalization), every map is then exactly half the previous one, the upsamplers (padding f/2) put each
    score on the centre of its cell, and the output is cropped back to [0:H, 0:W]. Same geometry, no offsets.
    """

    def __init__(self, num_classes: int, width: float, skips: int, batch_norm: bool = False):
        super().__init__()
        self.backbone = VGG16(width, batch_norm=batch_norm)
        self.head = FCNHead(self.backbone.out_channels, self.backbone.pool_channels, num_classes, width, skips)
        self.output_stride = 32 // 2 ** skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % 32, 0, -h % 32))
        pool5, pools = self.backbone(x, return_pools=True)
        return self.head(pool5, pools)[:, :, :h, :w]

    def classifier_parameters(self) -> list[nn.Parameter]:
        return self.head.classifier_parameters()


class DeepLab(nn.Module):
    """A dense trunk, a head giving class scores at the output stride, bilinear upsampling to the input size
    (DeepLab v1 Sec. 3.1: "simple bilinear interpolation to increase their resolution by a factor of 8").
    `msc_features=True` feeds the image and pool1..pool4 to the head (v1's MSc).

    `train_at_stride = True` trains as the papers do: in train mode the scores stay at the output stride, and the
    loss takes the ground truth subsampled to them (v1 Sec. 3.1: "our targets are the ground truth labels
    (subsampled by 8)"; DeepLab v3 Sec. 4.1 names this as v1 and v2's practice). It also spares the upsampling and
    a 64x larger softmax in every step."""

    def __init__(self, backbone: nn.Module, head: nn.Module, *, msc_features: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.msc_features = msc_features
        self.output_stride = backbone.output_stride
        self.train_at_stride = False

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores at the output stride (before upsampling)."""
        if self.msc_features:
            features, pools = self.backbone(x, return_pools=True)
            return self.head(features, [x, *pools[:4]])
        return self.head(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.scores(x)
        return scores if self.training and self.train_at_stride else _resize(scores, x.shape[-2:])

    def classifier_parameters(self) -> list[nn.Parameter]:
        return self.head.classifier_parameters()


class MSC(DeepLab):
    """DeepLab v2 Sec. 3.2, multi-scale inputs: the shared network on the image at each of `scales`; the score
    maps are resized (bilinear) to the scale-1.0 map's size and fused by the pixelwise maximum.

    `train()` mode returns `[fused, scores at scales[0], scores at scales[1], ...]`, all at the input size (each at
    its own stride with `train_at_stride`), for a loss on each (the paper's training); `eval()` returns the fused
    logits. Same parameters and state-dict
    keys as the single-scale model, so weights move freely between the two.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, *, scales=MSC_SCALES):
        super().__init__(backbone, head)
        self.scales = _check_scales(scales)

    def forward(self, x: torch.Tensor):
        size = x.shape[-2:]
        return self.fuse([self.scores(x if s == 1.0 else scaled_input(x, s)) for s in self.scales], size)

    def fuse(self, maps: list[torch.Tensor], size) -> torch.Tensor | list[torch.Tensor]:
        """The score maps of `scales` -> the fused logits at `size` (eval), or [fused, *maps] at `size` (train)."""
        ref = maps[self.scales.index(1.0)] if 1.0 in self.scales else maps[self.scales.index(max(self.scales))]
        fused = torch.stack([_resize(m, ref.shape[-2:]) for m in maps]).amax(0)
        if not self.training:
            return _resize(fused, size)
        return [m if self.train_at_stride else _resize(m, size) for m in (fused, *maps)]


def scaled_input(x: torch.Tensor, s: float) -> torch.Tensor:
    """The (normalized) image resized bilinearly by `s`, as MSC feeds it (the Caffe Interp layer)."""
    return _resize(x, [max(1, round(n * s)) for n in x.shape[-2:]])


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _check_scales(scales) -> tuple[float, ...]:
    try:
        scales = tuple(float(s) for s in scales)
    except TypeError:
        raise ValueError(f"scales must be a sequence of positive numbers like (0.5, 0.75, 1.0), got {scales!r}")
    if not scales or any(not s > 0 for s in scales):
        raise ValueError(f"scales must be a non-empty sequence of positive numbers like (0.5, 0.75, 1.0), got {scales!r}")
    return scales


# ------------------------------------------------------------------------------------------------ builders

def _vgg_options(options: dict, allowed: set = frozenset()) -> dict:
    """The VGG-16 models' one architecture option: batch_norm (torchvision's vgg16_bn; see `VGG16`)."""
    _only(options, {"batch_norm"} | allowed)
    return {"batch_norm": options.get("batch_norm", False)}


def _fcn(rest: str, num_classes: int, width: float, options: dict) -> tuple[nn.Module, dict]:
    kept = _vgg_options(options)
    return FCN(num_classes, width, {"32s": 0, "16s": 1, "8s": 2}[rest], **kept), kept


def _deeplab_v1(rest: str, num_classes: int, width: float, options: dict) -> tuple[nn.Module, dict]:
    kept = _vgg_options(options)
    msc = rest.endswith("-msc")
    kernel, rate, channels = V1_FC6[rest.removesuffix("-msc")]
    backbone = VGG16(width, dense=True, **kept)
    msc_inputs = [3, *backbone.pool_channels[:4]] if msc else None
    head = DeepLabV1Head(backbone.out_channels, num_classes, kernel=kernel, rate=rate, channels=channels,
                         width=width, msc_inputs=msc_inputs)
    return DeepLab(backbone, head, msc_features=msc), kept


def _deeplab_v2(rest: str, num_classes: int, width: float, options: dict) -> tuple[nn.Module, dict]:
    msc = rest.endswith("-msc")
    trunk, head_name = rest.removesuffix("-msc").split("-", 1)
    scales = {"scales"} if msc else set()
    rates = V2_RATES[head_name]
    if trunk == "vgg":
        kept = _vgg_options(options, scales)
        backbone = VGG16(width, dense=True, **kept)
        head = ASPP([vgg_branch(backbone.out_channels, num_classes, r, width) for r in rates])
    else:
        _only(options, {"output_stride", "freeze_bn", "caffe"} | scales)
        kept = {"output_stride": options.get("output_stride", 8), "freeze_bn": options.get("freeze_bn", False)}
        if kept["output_stride"] not in (8, 16) or isinstance(kept["output_stride"], bool):
            raise ValueError(f"output_stride must be 8 or 16 (DeepLab v2 ResNet-101), got {kept['output_stride']!r}")
        if not isinstance(kept["freeze_bn"], bool):
            raise ValueError(f"freeze_bn must be True or False, got {kept['freeze_bn']!r}")
        if options.get("caffe"):  # kept only when set, so the options of every other model stay as they were
            kept["caffe"] = options["caffe"]
        backbone = ResNet101(width, **kept)
        head = ASPP([resnet_branch(backbone.out_channels, num_classes, r) for r in rates])
    if msc:
        kept["scales"] = _check_scales(options.get("scales", MSC_SCALES))
        return MSC(backbone, head, scales=kept["scales"]), kept
    return DeepLab(backbone, head), kept


def _only(options: dict, allowed: set) -> None:
    bad = sorted(set(options) - allowed)
    if bad:
        raise ValueError(f"option(s) {bad} do not apply to this model; it accepts "
                         f"{sorted(allowed | {'weights'})} (batch_norm: VGG-16 models only; output_stride, freeze_bn and "
                         f"caffe: ResNet-101 models only; scales: DeepLab-v2 -msc models only)")


def _names() -> dict[str, tuple]:
    names = {f"fcn{s}": (_fcn, s) for s in ("32s", "16s", "8s")}
    for v in V1_FC6:
        for suffix in ("", "-msc"):
            names[f"deeplab-v1-{v}{suffix}"] = (_deeplab_v1, v + suffix)
    for trunk, heads in V2_HEADS.items():
        for h in heads:
            for suffix in ("", "-msc"):
                names[f"deeplab-v2-{trunk}-{h}{suffix}"] = (_deeplab_v2, f"{trunk}-{h}{suffix}")
    return names


_BUILDERS = _names()


def available() -> list[str]:
    """Every name `build_model` accepts, in the papers' order."""
    return list(_BUILDERS)


def _check_input(model: nn.Module, args) -> None:
    """Forward pre-hook: the network's input must be normalized images float [B,3,H,W]; say so in its terms
    rather than with torch's message from deep inside a convolution (or FCN's crop: "too many indices")."""
    x = args[0] if args else None
    if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        got = f"{x.dtype} {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{getattr(model, 'name', 'the model')} takes normalized RGB images float [B,3,H,W], got "
                         f"{got}; add a batch axis with x[None], make grey/RGBA images RGB, and convert uint8 images "
                         "with dlcore.data.transforms.normalize(images)")


def build_model(name: str, num_classes: int = 21, width: float = 1.0, **options) -> nn.Module:
    """Build a network of the papers by name (see `available()`).

    num_classes: class-score channels (21 for PASCAL VOC, background included). width: multiplies every hidden
    channel count (1.0 = the papers'; 0.0625-0.25 for CPU teaching runs). Options, keyword-only:
    `batch_norm=True|False` (VGG-16 models: torchvision's vgg16_bn trunk; default False, the papers' VGG-16),
    `output_stride=8|16` and `freeze_bn=True|False` (ResNet-101 models; defaults 8, False), `caffe=True`
    (ResNet-101: the released Caffe model's strides and pool1, see `ResNet101`; import-caffe sets it),
    `scales=(0.5, 0.75, 1.0)` (DeepLab-v2 `-msc` models), `weights=None|"imagenet"|path|torchvision enum`
    (ImageNet init of the trunk and VGG's fc6/fc7, width 1.0 only; "imagenet" downloads through torchvision).
    `model.options` keeps the architecture options (not `weights`: a checkpoint rebuild must not download).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {available()}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1 (21 for PASCAL VOC), got {num_classes!r}")
    width = check_width(width)
    weights = options.pop("weights", None)
    builder, rest = _BUILDERS[name]
    model, kept = builder(rest, int(num_classes), width, options)
    model.name, model.num_classes, model.width, model.options = name, int(num_classes), width, kept
    model.register_forward_pre_hook(_check_input)
    if weights is not None:
        if width != 1.0:
            raise ValueError(f"weights={weights!r} needs width=1.0: ImageNet weights fit the papers' channel counts "
                             f"only (got width={width})")
        trunk = model.backbone
        load_torchvision_weights(model, imagenet_weights(trunk) if weights == "imagenet" else weights)
    return model


# ---------------------------------------------------------------------------------------------- Table 2

def fov_table() -> list[dict]:
    """DeepLab v1 Table 2's columns, read off the four built networks (width 1.0, 21 classes, meta device).

    receptive_field is the paper's: fc6's outer taps are (k-1)*r units apart on the trunk's output-stride
    grid, plus the 32-pixel cell of one unit of the original (stride-32) VGG-16: (k-1)*r*8 + 32. The full
    theoretical receptive field of an fc8 unit through the whole net (`dlcore.atrous.receptive_field`) is
    beside it. params counts every parameter of the net, fc8 for 21 classes included.
    """
    import torchvision

    with torch.device("meta"):
        vgg_cell = receptive_field(layer_geometry(torchvision.models.vgg16(weights=None).features)).stride
        rows = []
        for variant in V1_FC6:
            model = build_model(f"deeplab-v1-{variant}", num_classes=21)
            fc6 = model.head.fc6
            k, r = fc6.kernel_size[0], fc6.dilation[0]
            n = sum(p.numel() for p in model.parameters())
            rows.append({"name": model.name, "kernel": f"{k}x{k}", "input_stride": r,
                         "receptive_field": (k - 1) * r * model.output_stride + vgg_cell,
                         "full_receptive_field": receptive_field(layer_geometry(model)).size,
                         "params": f"{n / 1e6:.1f}M", "params_exact": n})
    return rows
