"""VGG-16 and ResNet-101 made dense: torchvision's definitions, strides turned into dilations.

Both trunks are built from torchvision's own model definitions (`torchvision.models.vgg16`,
`torchvision.models.resnet101`), not re-typed copies, so their module names are torchvision's and a
torchvision ImageNet state dict loads into them at width 1.0 (`dlcore.imagenet.load_torchvision_weights`).

- FCN (Long et al. 2015, Sec. 3.1): VGG-16 as published, output stride 32.
- DeepLab v1 (Chen et al. 2015, Sec. 3.1): 3x3 max-pools with padding 1 (as in the released Caffe model),
  pool4 and pool5 at stride 1, conv5 dilated by 2: output stride 8 (the "hole" algorithm).
- DeepLab v2 (Chen et al. 2017, Sec. 3.1 and 4.1): ResNet-101 with layer3 at rate 2 and layer4 at rate 4
  (output stride 8) or layer4 at rate 2 (output stride 16); optionally frozen batch norm, as the paper trains.

`width` multiplies every channel count (0.0625 to 0.25 for CPU teaching runs); the ImageNet weights only
fit at width 1.0.
"""

from __future__ import annotations

import numbers
from collections import OrderedDict

import torch
from torch import nn

from dlcore.atrous import make_dense

__all__ = ["scaled", "check_width", "VGG16", "ResNet101"]


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


def _stem(backbone: nn.Module, x: torch.Tensor, *args):
    """`backbone.stem(x, *args)`, or what `backbone.stem_memo` remembers of it: the teaching zoo memoises the frozen
    lower stages (`dlcore.zoo.memo`), so that a network trained on top of them runs its own forward every step."""
    memo = getattr(backbone, "stem_memo", None)
    return backbone.stem(x, *args) if memo is None else memo(backbone.stem, x, *args)


# ------------------------------------------------------------------------------------------------- VGG-16

class VGG16(nn.Module):
    """VGG-16's `features` (torchvision's definition and names), plain (FCN) or dense at output stride 8 (DeepLab).

    `dense=True` is DeepLab v1's surgery (Sec. 3.1), done by the hole algorithm itself
    (`dlcore.atrous.make_dense(features, output_stride=8)`): pool4 and pool5 at stride 1, conv5_1..conv5_3 at
    dilation 2 (padding 2 keeps the map size). Two details are the released Caffe model's: every max-pool is
    3x3 with padding 1, and pool5 keeps that window at stride 1 rather than becoming a dilated pool
    (`dilate_pools=False`). The same surgery, step by step, is notebook 03's first section. `forward(x, return_pools=True)` also returns the outputs of pool1..pool5
    (FCN's skips and DeepLab v1's MSc read them);
    `stem` and `top` split it at pool4, where the teaching zoo's frozen part ends.

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
            for i in self.pool_indices:  # the released Caffe model's pools: 3x3 with padding 1
                features[i] = nn.MaxPool2d(3, stride=2, padding=1)
            # the hole algorithm: pool4 and pool5 at stride 1, conv5 (and the head's fc6) at the rates it leaves
            features = make_dense(features, output_stride=8, dilate_pools=False)
        self.features = features
        self.width = width
        self.batch_norm = batch_norm
        self.output_stride = 8 if dense else 32
        self.out_channels = scaled(512, width)
        self.pool_channels = [scaled(c, width) for c in (64, 128, 256, 512, 512)]

    def stem(self, x: torch.Tensor, return_pools: bool = False):
        """conv1_1 .. pool4: the lower stages (the teaching zoo keeps them frozen) -> (pool4, [pool1..pool4] or [])."""
        return self._run(x, 0, self.pool_indices[3] + 1, return_pools)

    def top(self, low, return_pools: bool = False):
        """conv5_1 .. pool5 on what `stem` returned: `forward`'s result."""
        x, pools = low
        x, more = self._run(x, self.pool_indices[3] + 1, len(self.features), return_pools)
        return (x, [*pools, *more]) if return_pools else x

    def _run(self, x: torch.Tensor, start: int, stop: int, keep_pools: bool):
        pools = []
        for i in range(start, stop):
            x = self.features[i](x)
            if keep_pools and i in self.pool_indices:
                pools.append(x)
        return x, pools

    def forward(self, x: torch.Tensor, return_pools: bool = False):
        return self.top(_stem(self, x, return_pools), return_pools)


# ---------------------------------------------------------------------------------------------- ResNet-101

class ResNet101(nn.Module):
    """ResNet-101 (torchvision's definition and names: conv1, bn1, layer1..layer4) with atrous convolution.

    DeepLab v2 (Sec. 3.1, 4.1): output_stride 8 = layer3 at rate 2 and layer4 at rate 4; 16 = layer4 at rate 2.
    The strides become rates by the hole algorithm itself (`dlcore.atrous.make_dense(..., block_rate=True)`):
    DeepLab's Caffe model (and kazuto1011's port) runs a stage's first block at the stage's new rate too, which
    is what the hole algorithm gives where the block strides its 1x1 conv (`caffe=True`); torchvision's blocks
    stride the 3x3, so `block_rate` says to keep DeepLab's rates there (same weights either way, so the OS-8
    and OS-16 state dicts are the same).

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
        if not isinstance(caffe, bool):
            raise ValueError(f"caffe must be True or False, got {caffe!r}")
        with torch.device("meta"):
            net = torchvision.models.resnet101(weights=None)
        _rebuild(net, width, _init_like_torchvision)
        if caffe:
            net.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)  # Caffe rounds pooled sizes up
            for stage in (net.layer2, net.layer3, net.layer4):
                block = stage[0]
                block.conv1.stride, block.conv2.stride = block.conv2.stride, block.conv1.stride
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        trunk = nn.Sequential(OrderedDict((name, getattr(net, name)) for name in names))
        trunk = make_dense(trunk, output_stride=output_stride, block_rate=True)  # the ImageNet classifier is dropped
        self.caffe = caffe
        for name in names:
            setattr(self, name, getattr(trunk, name))
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

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 and layer1..layer3: the lower stages (the teaching zoo keeps them frozen, and trains layer4)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))

    def top(self, low: torch.Tensor) -> torch.Tensor:
        return self.layer4(low)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(_stem(self, x))
