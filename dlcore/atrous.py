"""The hole algorithm: atrous convolution, upsampled filters, dense evaluation, receptive fields.

DeepLab v1 (Chen et al. 2015, Sec. 3.1) computes dense DCNN responses by "skipping subsampling" in the last
pooling layers and "introducing zeros to increase the length of the filters" of the layers after them:
the *hole algorithm* (algorithme a trous). DeepLab v2 (Sec. 3.1, Eq. 1) writes the 1-D atrous convolution as

    y[i] = sum_k x[i + rate * k] w[k]

and shows that it enlarges the field of view of a filter with no extra parameters and no extra computation
per output position. This module keeps each of those statements as a small function with a test beside it.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections import OrderedDict
from typing import Iterable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "atrous_conv2d", "upsample_filter", "make_dense", "shift_and_stitch", "exact_region",
    "ReceptiveField", "receptive_field", "layer_geometry", "count_macs", "tap_counts", "tap_positions",
]


def _check_rate(rate) -> int:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Integral) or rate < 1:
        raise ValueError(f"rate must be an integer >= 1 (rate 1 is ordinary convolution), got {rate!r}")
    return int(rate)


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, numbers.Integral) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0 for v in pair):
        raise ValueError(f"{name} must be a non-negative int or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def atrous_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  rate: int = 1, padding=0, groups: int = 1) -> torch.Tensor:
    """Atrous convolution written out tap by tap (DeepLab v2, Sec. 3.1, Eq. 1, in 2-D).

    y[b, o, i, j] = bias[o] + sum_{c, m, n} x[b, c, i + rate*m, j + rate*n] * weight[o, c, m, n]
    on the zero-padded input. Each kernel tap (m, n) multiplies one *shifted slice* of the input, the slices
    `rate` pixels apart: that is the whole idea, and it equals `F.conv2d(x, weight, bias, padding=padding,
    dilation=rate, groups=groups)`. Slow on purpose: it is the reference the fast kernel is checked against.
    """
    rate = _check_rate(rate)
    pad_h, pad_w = _pair(padding, "padding")
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"atrous_conv2d needs x [B,C,H,W] and weight [C_out,C_in/groups,kh,kw], "
                         f"got x {tuple(x.shape)} and weight {tuple(weight.shape)}")
    c_out, c_in_per_group, kh, kw = weight.shape
    if groups < 1 or x.shape[1] != c_in_per_group * groups or c_out % groups:
        raise ValueError(f"channels do not match: x {tuple(x.shape)} has {x.shape[1]} channels but weight "
                         f"{tuple(weight.shape)} with groups={groups} expects {c_in_per_group * groups} "
                         f"(and C_out={c_out} divisible by groups)")
    xp = F.pad(x, (pad_w, pad_w, pad_h, pad_h))
    out_h, out_w = xp.shape[2] - rate * (kh - 1), xp.shape[3] - rate * (kw - 1)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"input {tuple(x.shape)} with padding {(pad_h, pad_w)} is smaller than the dilated "
                         f"kernel {(rate * (kh - 1) + 1, rate * (kw - 1) + 1)} (kernel {(kh, kw)}, rate {rate})")
    w = weight.reshape(groups, c_out // groups, c_in_per_group, kh, kw)
    y = x.new_zeros(x.shape[0], groups, c_out // groups, out_h, out_w)
    for m in range(kh):
        for n in range(kw):
            # The tap (m, n) sees the input shifted by (rate*m, rate*n): the "holes" are the skipped pixels.
            tap = xp[:, :, rate * m: rate * m + out_h, rate * n: rate * n + out_w]
            tap = tap.reshape(x.shape[0], groups, c_in_per_group, out_h, out_w)
            y = y + torch.einsum("bgchw,goc->bgohw", tap, w[:, :, :, m, n])
    y = y.reshape(x.shape[0], c_out, out_h, out_w)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def upsample_filter(weight: torch.Tensor, rate: int) -> torch.Tensor:
    """Insert `rate - 1` zeros between consecutive taps (DeepLab v2, Sec. 3.1: "upsampling the filters").

    A k x k kernel becomes (rate*(k-1)+1)^2 with the original taps `rate` apart; an ordinary convolution
    with it equals atrous convolution with the original kernel, but multiplies all those zeros.
    """
    rate = _check_rate(rate)
    if weight.dim() < 2:
        raise ValueError(f"upsample_filter needs a weight whose last two dims are the kernel, got {tuple(weight.shape)}")
    kh, kw = weight.shape[-2:]
    up = weight.new_zeros(*weight.shape[:-2], rate * (kh - 1) + 1, rate * (kw - 1) + 1)
    up[..., ::rate, ::rate] = weight
    return up


# ---------------------------------------------------------------------------------------------- dense evaluation

_POINTWISE = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout, nn.Dropout2d, nn.BatchNorm2d, nn.Sigmoid, nn.Tanh)


def _scalar(value, name: str, layer: nn.Module) -> int:
    pair = _pair(value, name)
    if pair[0] != pair[1]:
        raise ValueError(f"{layer}: only square {name} is supported by the dense conversion, got {pair}")
    return pair[0]


def make_dense(net: nn.Module, output_stride: int = 1, *, dilate_pools: bool = True,
               block_rate: bool = False) -> nn.Sequential:
    """The hole algorithm (DeepLab v1, Sec. 3.1): the same network, evaluated at every input position.

    Walking the layers in order, a layer with stride s gets stride 1, and every *later* layer gets its
    dilation (and padding, so that "same" padding stays "same") multiplied by s; a max-pool after it becomes
    a dilated max-pool. The weights are shared with `net`, not copied: it is one set of parameters, two
    ways of sliding it. Accepts one layer or an nn.Sequential (nested ones too, and torchvision's residual
    blocks) of Conv2d, MaxPool2d and pointwise layers; the result has the same structure and module names, so
    a state dict of `net` loads into it.

    `output_stride` (DeepLab v2, Sec. 3.1): the first strides are kept while their product stays within
    output_stride, only the later ones become rates; DeepLab v1 is VGG-16 at output_stride=8.

    `dilate_pools=False` is the released DeepLab model's choice (its Caffe prototxt): a max-pool whose stride
    is removed keeps its own window and padding at stride 1 instead of becoming a dilated pool; the rates of
    the convolutions are unchanged. Pooling is not linear, so this is a (small) change of the function:
    notebook 02's equality with shift-and-stitch holds for the default, the hole algorithm proper.

    Residual blocks (torchvision's Bottleneck and BasicBlock; ResNet-101 in DeepLab v2): the main path and
    the shortcut are walked from the same rate, and both must subsample alike. `block_rate=True` runs a
    block whose stride is removed at the new rate throughout, the way DeepLab v2's released ResNet-101 does:
    there the stride sits on the block's first 1x1 convolution, so the hole algorithm proper gives exactly
    that; torchvision's blocks stride the 3x3 instead, which the hole algorithm proper leaves at the old rate.
    """
    if isinstance(output_stride, bool) or not isinstance(output_stride, numbers.Integral) or output_stride < 1:
        raise ValueError(f"output_stride must be an integer >= 1 (1 = fully dense), got {output_stride!r}")
    for name, flag in (("dilate_pools", dilate_pools), ("block_rate", block_rate)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    net = net if isinstance(net, nn.Sequential) else nn.Sequential(net)  # one layer: a chain of one
    return _HoleWalk(output_stride, dilate_pools, block_rate).module(net)


class _HoleWalk:
    """One pass of the hole algorithm over a network: `rate` is the dilation the next layer gets, `kept` the
    product of the strides kept so far."""

    def __init__(self, output_stride: int, dilate_pools: bool, block_rate: bool):
        self.output_stride, self.dilate_pools, self.block_rate = output_stride, dilate_pools, block_rate
        self.rate, self.kept = 1, 1

    def module(self, m: nn.Module) -> nn.Module:
        if isinstance(m, nn.Sequential):
            return nn.Sequential(OrderedDict((name, self.module(child)) for name, child in m.named_children()))
        if isinstance(m, _POINTWISE):
            return m
        if _is_residual_block(m):
            return self.block(m)
        if not isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            raise ValueError(f"make_dense handles Conv2d, MaxPool2d, pointwise layers and residual blocks; "
                             f"{type(m).__name__} has no dilation to scale (replace it, e.g. AvgPool2d by a "
                             f"depthwise Conv2d)")
        stride = _scalar(m.stride, "stride", m)
        keep = self.kept * stride <= self.output_stride  # this subsampling still fits in output_stride
        self.kept *= stride if keep else 1
        if isinstance(m, nn.MaxPool2d) and not self.dilate_pools:
            dense = copy.copy(m)  # the same window and padding, only the stride changed
            dense.stride = stride if keep else 1
        else:
            dense = _dilated(m, self.rate, stride if keep else 1)
        self.rate *= 1 if keep else stride
        return dense

    def block(self, block: nn.Module) -> nn.Module:
        main = [getattr(block, name) for name in _layer_names(block)]
        stride = math.prod(_scalar(m.stride, "stride", m) for m in main if not isinstance(m, _POINTWISE))
        start, dense = (self.rate, self.kept), copy.copy(block)
        dense._modules = OrderedDict(block._modules)  # a copy of the block; its layers are replaced below
        if self.block_rate and self.kept * stride > self.output_stride:  # the whole block at the new rate
            self.rate *= stride
            for name in _layer_names(block):
                layer = getattr(block, name)
                setattr(dense, name, layer if isinstance(layer, _POINTWISE) else _dilated(layer, self.rate, 1))
            if block.downsample is not None:
                dense.downsample = nn.Sequential(*(m if isinstance(m, _POINTWISE) else _dilated(m, self.rate, 1)
                                                   for m in block.downsample))
            return dense
        for name in _layer_names(block):
            setattr(dense, name, self.module(getattr(block, name)))
        end, (self.rate, self.kept) = (self.rate, self.kept), start
        if block.downsample is not None:
            dense.downsample = self.module(block.downsample)
        if (self.rate, self.kept) != end:
            raise ValueError(f"{type(block).__name__}: its shortcut subsamples differently from its main path")
        return dense


def _layer_names(block: nn.Module) -> list[str]:
    """The main path of torchvision's Bottleneck / BasicBlock, in the order its forward applies it."""
    return [name for name in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3") if hasattr(block, name)]


def _is_residual_block(m: nn.Module) -> bool:
    """torchvision's residual blocks: a main path (`_layer_names`) plus a shortcut (`downsample`, or none)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return isinstance(m, (BasicBlock, Bottleneck))


def _dilated(layer: nn.Module, rate: int, stride: int) -> nn.Module:
    """`layer` with its dilation and padding times `rate` and the given stride (same weights)."""
    dense = copy.copy(layer)  # shallow: Conv2d keeps the very same weight and bias Parameters
    if isinstance(layer, nn.Conv2d):
        if layer.kernel_size != (1, 1):  # a 1x1 kernel has no taps to spread: its dilation stays 1
            dense.dilation = (layer.dilation[0] * rate, layer.dilation[1] * rate)
            dense.padding = tuple(p * rate for p in _pair(layer.padding, "padding"))
        dense.stride = (stride, stride)
        return dense
    dense.stride = stride
    if rate == 1:
        return dense
    dense.dilation = _scalar(layer.dilation, "dilation", layer) * rate
    pad = _scalar(layer.padding, "padding", layer) * rate
    if not pad:
        return dense
    # Max-pool pads with -inf; torch caps implicit padding at half the kernel, so pad explicitly.
    dense.padding = 0
    return nn.Sequential(nn.ConstantPad2d(pad, float("-inf")), dense)


def _total_stride(net: nn.Module) -> int:
    return receptive_field(layer_geometry(net)).stride


def shift_and_stitch(net: nn.Module, x: torch.Tensor, s: int | None = None) -> torch.Tensor:
    """Dense output of a strided net by shift-and-stitch (FCN, Long et al. 2015, Sec. 3.2).

    Runs `net` on all s x s shifted inputs x[:, :, a:, b:] and interleaves: the output (i, j) of shift
    (a, b) lands at (a + s*i, b + s*j). `s` defaults to the net's total stride. Positions no shift reaches
    (only at the far border) are NaN.
    """
    s = _total_stride(net) if s is None else _check_rate(s)
    outs = {(a, b): net(x[:, :, a:, b:]) for a in range(s) for b in range(s)}
    height = max(a + s * (y.shape[2] - 1) for (a, _), y in outs.items()) + 1
    width = max(b + s * (y.shape[3] - 1) for (_, b), y in outs.items()) + 1
    first = outs[0, 0]
    stitched = first.new_full((first.shape[0], first.shape[1], height, width), float("nan"))
    for (a, b), y in outs.items():
        stitched[:, :, a::s, b::s][:, :, : y.shape[2], : y.shape[3]] = y
    return stitched


def exact_region(net: nn.Module, input_size: tuple[int, int], s: int | None = None) -> tuple[slice, slice]:
    """Output rows/cols where the dense net and shift-and-stitch must agree *exactly*.

    Zero padding is the one difference: the strided net run on x[a:] pads at the shifted border a-1, which
    lies inside the image, where the dense net sees real pixels. So equality is exact wherever an output's
    receptive field stays inside the (shifted) image: by `receptive_field`, output p reads input pixels
    p + offset ... p + offset + size - 1, and its shift a = p mod s must not cut them. Without padding
    (offset 0) this is the whole output.
    """
    rf = receptive_field(layer_geometry(net))
    s = rf.stride if s is None else _check_rate(s)
    # Left: the strided net's output i = p // s starts at s*i + offset (relative to its shifted input) >= 0.
    first = s * -(rf.offset // s)  # = s * ceil(-offset / s); offset <= 0 always
    return tuple(slice(first, n - rf.size - rf.offset + 1) for n in input_size)


# ------------------------------------------------------------------------------------------- receptive fields

class ReceptiveField(NamedTuple):
    """size: input pixels one output unit sees (per side); stride: input pixels between neighbouring outputs;
    offset: input coordinate of the first pixel output 0 sees (negative = reaches into the padding)."""
    size: int
    stride: int
    offset: int


def receptive_field(layers: Iterable[tuple[int, ...]]) -> ReceptiveField:
    """Receptive field of a chain of layers given as (kernel, stride, dilation[, padding]) per layer, one axis.

    The recurrence: a layer with kernel k and dilation d spans (k-1)*d + 1 of its inputs, which are `stride`
    input pixels apart, so  size += (k-1)*d*stride;  offset -= padding*stride;  stride *= s.
    Example: VGG-16 up to pool5 -> size 212, stride 32. `layer_geometry(module)` makes the list.
    """
    size, stride, offset = 1, 1, 0
    for layer in layers:
        if not 3 <= len(layer) <= 4:
            raise ValueError(f"each layer is (kernel, stride, dilation[, padding]), got {layer!r}")
        k, s, d, p = (*layer, 0) if len(layer) == 3 else layer
        if min(k, s, d) < 1 or p < 0:
            raise ValueError(f"kernel, stride and dilation must be >= 1 and padding >= 0, got {layer!r}")
        size += (k - 1) * d * stride
        offset -= p * stride
        stride *= s
    return ReceptiveField(size, stride, offset)


def layer_geometry(net: nn.Module) -> list[tuple[int, int, int, int]]:
    """(kernel, stride, dilation, padding) of every Conv2d / MaxPool2d / AvgPool2d / explicit pad in `net`, in order,
    along the height axis (pass them to `receptive_field`). Assumes a chain: branches (ASPP) need one call each."""
    geometry = []
    for layer in net.modules():
        if isinstance(layer, (nn.ConstantPad2d, nn.ZeroPad2d)):  # explicit padding: a 1x1 "layer" that pads
            geometry.append((1, 1, 1, layer.padding[2]))
        elif isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s, p = (_pair(getattr(layer, a), a)[0] for a in ("kernel_size", "stride", "padding"))
            d = _pair(getattr(layer, "dilation", 1), "dilation")[0]
            geometry.append((k, s, d, p))
    return geometry


# ------------------------------------------------------------------------------------------------------ cost

def count_macs(net: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of the Conv2d layers of `net` on input `x` (pooling and ReLU are comparatively free).

    A conv output element costs (C_in/groups) * kh * kw MACs, whatever the dilation: the holes are skipped,
    not multiplied, which is the papers' point (DeepLab v2, Sec. 3.1).
    """
    total = 0

    def hook(layer, _inputs, output):
        nonlocal total
        total += output.numel() * layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return total


# ---------------------------------------------------------------------------------------- taps and gridding

def tap_counts(rates: Iterable[int], kernel_size: int = 3) -> np.ndarray:
    """How many paths connect one output unit to each input pixel through stacked k x k atrous convs.

    Stacking layers of rates r1, r2, ... is a chain of convolutions of sparse kernels, so the answer is the
    full convolution of their all-ones upsampled kernels. Zeros inside the field of view are the "gridding"
    holes of equal stacked rates (e.g. rates (2, 2, 2) only ever read even offsets).
    """
    counts = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    for rate in rates:
        kernel = upsample_filter(torch.ones(1, 1, kernel_size, kernel_size, dtype=torch.float64), rate)
        pad = kernel.shape[-1] - 1
        counts = F.conv2d(F.pad(counts, (pad, pad, pad, pad)), kernel)
    return counts[0, 0].round().to(torch.int64).numpy()


def tap_positions(center: tuple[int, int], rate: int, kernel_size: int = 3) -> np.ndarray:
    """(row, col) of the k x k input pixels one atrous filter reads around `center`: rate apart (Eq. 1)."""
    rate = _check_rate(rate)
    half = (kernel_size - 1) // 2
    offsets = rate * (np.arange(kernel_size) - half)
    rows, cols = np.meshgrid(center[0] + offsets, center[1] + offsets, indexing="ij")
    return np.stack([rows.ravel(), cols.ravel()], axis=1)


def valid_tap_fraction(rate: int, n: int, kernel_size: int = 3) -> float:
    """Share of the (position, tap) pairs of a k x k filter at `rate` on an n x n map whose tap lands inside the
    map rather than in its zero padding: the part of a large field of view a small map cannot use. DeepLab v3
    (Chen et al. 2017, "Rethinking Atrous Convolution", Sec. 3.3 and Fig. 4) measured it: as the rate nears the
    map size, fewer of a 3x3 filter's weights land on the map, until only the centre one does."""
    rate = _check_rate(rate)
    offsets = rate * (np.arange(kernel_size) - (kernel_size - 1) / 2)  # Caffe's even kernels: pad (k-1)*rate/2
    per_axis = np.clip(n - np.abs(offsets), 0, None).sum() / (kernel_size * n)
    return float(per_axis ** 2)
