"""VGG-16 and ResNet-101 made dense: torchvision's definitions, strides turned into dilations.

Both trunks are built from torchvision's own model definitions (`torchvision.models.vgg16`,
`torchvision.models.resnet101`), not re-typed copies, so their module names are torchvision's and a
torchvision ImageNet state dict loads into them at width 1.0 (`load_torchvision_weights`).

- FCN (Long et al. 2015, Sec. 3.1): VGG-16 as published, output stride 32.
- DeepLab v1 (Chen et al. 2015, Sec. 3.1): 3x3 max-pools with padding 1 (as in the released Caffe model),
  pool4 and pool5 at stride 1, conv5 dilated by 2: output stride 8 (the "hole" algorithm).
- DeepLab v2 (Chen et al. 2017, Sec. 3.1 and 4.2): ResNet-101 with layer3 at rate 2 and layer4 at rate 4
  (output stride 8) or layer4 at rate 2 (output stride 16); optionally frozen batch norm, as the paper trains.

`width` multiplies every channel count (0.0625 to 0.25 for CPU teaching runs); the ImageNet weights only
fit at width 1.0.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["scaled", "VGG16", "ResNet101", "load_torchvision_weights", "subsample_fc", "bilinear_kernel"]


def scaled(channels: int, width: float) -> int:
    """`channels` times the width multiplier, at least 1 (the same rounding everywhere, so residual sums match)."""
    return max(1, int(round(channels * width)))


# Widths above this are refused: channel counts (and memory) grow as width**2, and width 8 already asks for
# about 64 x the papers' parameters (VGG-16 DeepLab: ~1.3 G); anything larger is a typo, not an experiment.
MAX_WIDTH = 8.0


def check_width(width) -> float:
    if isinstance(width, bool) or not isinstance(width, numbers.Real) or not 0 < width <= MAX_WIDTH:
        raise ValueError(f"width must be a number > 0 and <= {MAX_WIDTH:g} (1.0 = the papers' channel counts, "
                         f"0.25 for CPU runs), got {width!r}")
    return float(width)


def bilinear_kernel(factor: int) -> torch.Tensor:
    """The 2f x 2f bilinear tent `(1 - |x - (f - 0.5)| / f)` outer product (FCN's `upsample_filt`, Sec. 3.3)."""
    x = torch.arange(2 * factor, dtype=torch.float32)
    tent = 1 - (x - (factor - 0.5)).abs() / factor
    return tent[:, None] * tent[None, :]


# --------------------------------------------------------------------------------------- channel scaling

def _rebuild(net: nn.Module, width: float, init) -> None:
    """Replace every Conv2d / BatchNorm2d of `net` (built on the meta device) by a fresh one with its channels
    scaled by `width`, on the current default device, initialised by `init`. Module names are kept, so a
    torchvision state dict's keys still match. The network's input (3 RGB channels) is never scaled."""
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                c_in = child.in_channels if child.in_channels == 3 else scaled(child.in_channels, width)
                new = nn.Conv2d(c_in, scaled(child.out_channels, width), child.kernel_size, child.stride,
                                child.padding, child.dilation, child.groups, child.bias is not None)
            elif isinstance(child, nn.BatchNorm2d):
                new = nn.BatchNorm2d(scaled(child.num_features, width), child.eps, child.momentum)
            else:
                continue
            init(new)
            setattr(parent, name, new)


def _init_like_torchvision(m: nn.Module) -> None:
    """torchvision's VGG/ResNet init: Kaiming normal (fan_out, ReLU) convs, zero biases, BN weight 1 bias 0."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------------------------- VGG-16

class VGG16(nn.Module):
    """VGG-16's `features` (torchvision's definition and names), plain (FCN) or dense at output stride 8 (DeepLab).

    `dense=True` is DeepLab v1's surgery (Sec. 3.1): every max-pool 3x3 with padding 1; pool4 and pool5 at
    stride 1; conv5_1..conv5_3 at dilation 2 (padding 2 keeps the map size). The same surgery, step by step, is
    notebook 03's first section. `forward(x, return_pools=True)` also returns the outputs of pool1..pool5
    (FCN's skips and DeepLab v1's MSc read them).

    `batch_norm=True` uses torchvision's `vgg16_bn` definition (batch norm after every conv). The papers start
    from ImageNet weights; a plain 16-layer VGG trained from scratch on a CPU barely leaves the background class
    in the few hundred steps a notebook has, while the batch-norm variant learns, so the teaching runs use it.
    """

    def __init__(self, width: float = 1.0, *, dense: bool = False, batch_norm: bool = False):
        super().__init__()
        import torchvision

        if not isinstance(batch_norm, bool):
            raise ValueError(f"batch_norm must be True or False, got {batch_norm!r}")
        definition = torchvision.models.vgg16_bn if batch_norm else torchvision.models.vgg16
        with torch.device("meta"):  # the definition only: the 100M-parameter classifier is never allocated
            features = definition(weights=None).features
        _rebuild(features, width, _init_like_torchvision)
        self.pool_indices = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        if dense:
            for n, i in enumerate(self.pool_indices):  # pools 1-3 keep stride 2, pools 4-5 get stride 1
                features[i] = nn.MaxPool2d(3, stride=2 if n < 3 else 1, padding=1)
            for m in features[self.pool_indices[3] + 1:]:  # conv5: the hole algorithm at rate 2
                if isinstance(m, nn.Conv2d):
                    m.dilation, m.padding = (2, 2), (2, 2)
        self.features = features
        self.width = width
        self.batch_norm = batch_norm
        self.output_stride = 8 if dense else 32
        self.out_channels = scaled(512, width)
        self.pool_channels = [scaled(c, width) for c in (64, 128, 256, 512, 512)]

    def forward(self, x: torch.Tensor, return_pools: bool = False):
        pools = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.pool_indices:
                pools.append(x)
        return (x, pools) if return_pools else x


# ---------------------------------------------------------------------------------------------- ResNet-101

class ResNet101(nn.Module):
    """ResNet-101 (torchvision's definition and names: conv1, bn1, layer1..layer4) with atrous convolution.

    DeepLab v2 (Sec. 3.1, 4.2): output_stride 8 = layer3 at rate 2 and layer4 at rate 4; 16 = layer4 at rate 2.
    torchvision's `replace_stride_with_dilation` removes the strides; its first block of a dilated stage
    keeps the previous rate, while DeepLab's Caffe model (and kazuto1011's port) runs the whole stage at the
    new rate, block 0 included: we set that (same weights, so the OS-8 and OS-16 state dicts are the same).

    `freeze_bn=True` is the paper's training: batch norm uses the ImageNet statistics and its affine
    parameters stay fixed (Caffe `use_global_stats`), as batches of a few 321 x 321 crops cannot estimate them.

    `caffe=True` is the sampling of DeepLab's released Caffe ResNet-101 (the original ResNet "v1"), which the
    published weights were trained with: a stage's first block strides its 1x1 conv (res3a_branch2a), not the
    3x3 (torchvision's "v1.5"), and pool1 rounds its output size up (Caffe's ceil mode). Same parameters.
    """

    def __init__(self, width: float = 1.0, *, output_stride: int = 8, freeze_bn: bool = False, caffe: bool = False):
        super().__init__()
        import torchvision

        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8 or 16 for ResNet-101 (DeepLab v2; 32 = the ImageNet "
                             f"classifier), got {output_stride!r}")
        dilate = [False, output_stride == 8, output_stride < 32]  # layer2, layer3, layer4
        with torch.device("meta"):
            net = torchvision.models.resnet101(weights=None, replace_stride_with_dilation=dilate)
        _rebuild(net, width, _init_like_torchvision)
        for stage in (net.layer3, net.layer4):  # block 0 at the stage's rate too (DeepLab's Caffe model)
            rate = stage[1].conv2.dilation
            if rate == (1, 1):
                continue
            stage[0].conv2.dilation, stage[0].conv2.padding = rate, rate
        if not isinstance(caffe, bool):
            raise ValueError(f"caffe must be True or False, got {caffe!r}")
        if caffe:
            net.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)  # Caffe rounds pooled sizes up
            for stage in (net.layer2, net.layer3, net.layer4):
                block = stage[0]
                block.conv1.stride, block.conv2.stride = block.conv2.stride, block.conv1.stride
        self.caffe = caffe
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))  # avgpool and fc (the ImageNet classifier) are dropped
        self.width = width
        self.output_stride = output_stride
        self.out_channels = scaled(2048, width)
        self.freeze_bn = bool(freeze_bn)
        if self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.requires_grad_(False)
                    m.bias.requires_grad_(False)

    def train(self, mode: bool = True):
        """With freeze_bn, batch norm stays in eval mode (running statistics used, never updated) in training."""
        super().train(mode)
        if self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def low_level(self, x: torch.Tensor) -> torch.Tensor:
        """The stem and layer1..layer3: what the teaching zoo keeps frozen (it trains layer4 and the head)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.low_level(x))


# ------------------------------------------------------------------------------------ torchvision weights

def subsample_fc(fc_weight: torch.Tensor, fc_bias: torch.Tensor | None, conv: nn.Conv2d,
                 in_kernel: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A fully connected layer's weights as `conv`'s, subsampled the way DeepLab v1 initialises fc6/fc7.

    `fc_weight` [out, in * in_kernel**2] reads a C x k x k window (channel-major, like nn.Flatten); viewed as
    a [out, C, k, k] kernel (FCN Sec. 3.1: convolutionalization) it is then decimated (DeepLab v1 Sec. 4.1,
    "we simply subsample the first FC layer"): the kernel spatially to `conv`'s size (7x7 -> 4x4 keeps taps
    0, 2, 4, 6; 7x7 -> 3x3 keeps 0, 3, 6) and the filters every (out / conv.out_channels)-th (LargeFOV: 1,024
    of 4,096), the input channels likewise. At the same size it is FCN's exact convolutionalization.
    """
    out_f = fc_weight.shape[0]
    in_c = fc_weight.shape[1] // (in_kernel * in_kernel)
    if in_c * in_kernel * in_kernel != fc_weight.shape[1]:
        raise ValueError(f"fc weight {tuple(fc_weight.shape)} does not read a C x {in_kernel} x {in_kernel} window")
    k_out, k_in = conv.out_channels, conv.in_channels
    kh = conv.kernel_size[0]
    if out_f % k_out or in_c % k_in or kh > in_kernel:
        raise ValueError(f"cannot subsample fc weight {tuple(fc_weight.shape)} (C={in_c}, {in_kernel}x{in_kernel}) "
                         f"into conv weight {tuple(conv.weight.shape)}: channels must divide and the kernel shrink")
    w = fc_weight.reshape(out_f, in_c, in_kernel, in_kernel)
    taps = torch.linspace(0, in_kernel - 1, kh).round().long()  # spatial decimation, corners kept
    w = w[:: out_f // k_out, :: in_c // k_in][:, :, taps][:, :, :, taps]
    b = None if fc_bias is None else fc_bias[:: out_f // k_out]
    return w.contiguous(), b


def _state_dict_of(weights) -> Mapping[str, torch.Tensor]:
    if isinstance(weights, Mapping):
        return weights
    if isinstance(weights, (str, os.PathLike)):
        if not os.path.exists(weights):
            raise FileNotFoundError(f"no weights file at {os.fspath(weights)!r}; pass a torchvision state dict saved "
                                    f"with torch.save(model.state_dict(), path), or a torchvision weights enum")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and "state_dict" in state and not any(k.endswith("weight") for k in state):
            state = state["state_dict"]
        if not isinstance(state, Mapping):
            raise ValueError(f"{os.fspath(weights)!r} does not hold a state dict (got {type(state).__name__})")
        return state
    if hasattr(weights, "get_state_dict"):  # a torchvision WeightsEnum: downloads once into torch's cache
        return weights.get_state_dict(progress=True, check_hash=True)
    raise ValueError(f"weights must be a torchvision weights enum (e.g. VGG16_Weights.IMAGENET1K_V1), a file path "
                     f"or a state dict, got {type(weights).__name__}")


def _copy(param: torch.Tensor, value: torch.Tensor, key: str) -> None:
    if tuple(param.shape) != tuple(value.shape):
        raise ValueError(f"torchvision weight {key!r} has shape {tuple(value.shape)} but the model expects "
                         f"{tuple(param.shape)}: is it the right architecture (VGG-16 / ResNet-101) at width 1.0?")
    with torch.no_grad():
        param.copy_(value)


def _load_trunk(trunk: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    own = trunk.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"the torchvision state dict lacks {len(missing)} keys of the {type(trunk).__name__} trunk, "
                         f"e.g. {missing[:3]}: is it a {type(trunk).__name__} state dict?")
    params = dict(trunk.named_parameters())
    params.update(trunk.named_buffers())
    for key, tensor in params.items():
        if key in state:
            _copy(tensor, state[key], key)


def load_torchvision_weights(model: nn.Module, weights) -> nn.Module:
    """Initialise `model`'s trunk (and VGG's fc6/fc7) from torchvision ImageNet weights; returns `model`.

    `model`: a VGG16 / ResNet101 trunk, or any dlcore model holding one. `weights`: a torchvision enum
    (`VGG16_Weights.IMAGENET1K_V1`, `ResNet101_Weights.IMAGENET1K_V1`: downloaded once by torchvision), a path
    to a saved torchvision state dict (loaded with weights_only=True) or a state dict. The ImageNet classifier
    of VGG-16 initialises every fc6/fc7 the heads declare (`imagenet_fc_layers()`): convolutionalized exactly
    for FCN, subsampled for DeepLab (`subsample_fc`). Class-score layers (fc8, score_*) keep their init.
    """
    trunks = [m for m in model.modules() if isinstance(m, (VGG16, ResNet101))]
    if not trunks:
        raise ValueError(f"{type(model).__name__} holds no VGG16 or ResNet101 trunk to load torchvision weights into")
    for trunk in trunks:
        if trunk.width != 1.0:
            raise ValueError(f"ImageNet weights fit the papers' channel counts only: build the model with width=1.0 "
                             f"(got width={trunk.width})")
    state = _state_dict_of(weights)
    for trunk in trunks:
        if isinstance(trunk, VGG16):
            _load_trunk(trunk, {k: v for k, v in state.items() if k.startswith("features.")})
        else:
            _load_trunk(trunk, {k: v for k, v in state.items() if not k.startswith("fc.")})
    fc_layers = [pair for m in model.modules() if hasattr(m, "imagenet_fc_layers") for pair in m.imagenet_fc_layers()]
    if fc_layers:
        for key in ("classifier.0.weight", "classifier.3.weight"):
            if key not in state:
                raise ValueError(f"the state dict has no {key!r}: fc6/fc7 are initialised from VGG-16's classifier")
        for role, conv in fc_layers:
            # torchvision's classifier: [0] Linear(512*7*7, 4096) = fc6, [3] Linear(4096, 4096) = fc7
            i, k = (0, 7) if role == "fc6" else (3, 1)
            w, b = subsample_fc(state[f"classifier.{i}.weight"], state.get(f"classifier.{i}.bias"), conv, in_kernel=k)
            _copy(conv.weight, w, f"classifier.{i}.weight (as {role})")
            if conv.bias is not None and b is not None:
                _copy(conv.bias, b, f"classifier.{i}.bias (as {role})")
    return model


def imagenet_weights(trunk: nn.Module):
    """The torchvision enum `weights="imagenet"` stands for (IMAGENET1K_V1, as the papers used ImageNet-1k)."""
    from torchvision.models import ResNet101_Weights, VGG16_Weights

    from torchvision.models import VGG16_BN_Weights

    if isinstance(trunk, VGG16):
        return VGG16_BN_Weights.IMAGENET1K_V1 if trunk.batch_norm else VGG16_Weights.IMAGENET1K_V1
    return ResNet101_Weights.IMAGENET1K_V1
