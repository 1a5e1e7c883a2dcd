"""The heads on top of the trunks: FCN's score and skip layers, DeepLab v1's fc6/fc7/fc8 and MSc, v2's ASPP.

Every head keeps the papers' layer names (fc6, fc7, fc8, score_fr, score_pool4, upscore2, ...), declares its
10x-learning-rate class-score layers in `classifier_parameters()` and, where VGG-16's ImageNet classifier
initialises it, its fc6/fc7 in `imagenet_fc_layers()` (read by `dlcore.imagenet.load_torchvision_weights`).
Convolutionalization (FCN Sec. 3.1) and its subsampled form (DeepLab v1 Sec. 3.2) are here, with the FCN's
bilinear upsampling kernel.
`width` scales the hidden channels (4096, 1024, 128); the number of classes never scales.
"""

from __future__ import annotations

import torch
from torch import nn

from dlcore.backbones import scaled

__all__ = ["convolutionalize", "subsample_fc", "bilinear_kernel", "FCNHead", "bilinear_upsampler", "BilinearUpsampler", "DeepLabV1Head", "msc_mlp", "ASPP", "vgg_branch", "resnet_branch"]


class Dropout(nn.Dropout):
    """The papers' dropout, its mask drawn as uniform < keep: the same distribution as `nn.Dropout`, 2x faster
    to train with on a CPU, where torch's bernoulli_ costs more than a zoo head's convolutions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))


def _kaiming(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(conv.bias)
    return conv


def _classifier(conv: nn.Conv2d, std: float = 0.01) -> nn.Conv2d:
    """DeepLab's class-score layers start from a Gaussian of std 0.01 and zero bias (the Caffe prototxts)."""
    nn.init.normal_(conv.weight, 0.0, std)
    nn.init.zeros_(conv.bias)
    return conv


def _zero(conv: nn.Conv2d) -> nn.Conv2d:
    """FCN Sec. 4.2/4.3: score layers start at zero, so a new skip leaves the net's predictions unmodified."""
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


# ------------------------------------------------------------------------------------------------------ FCN

def convolutionalize(fc: nn.Linear, in_channels: int, kernel_size: int) -> nn.Conv2d:
    """FCN §3.1: a fully connected layer on a C x k x k input is a k x k convolution with the same weights.

    Run on a larger input, the convolution evaluates the classifier at every k x k window (stride 1) in one
    pass, which is what makes a classification net "fully convolutional". (`subsample_fc` at the same size.)
    """
    if fc.in_features != in_channels * kernel_size * kernel_size:
        raise ValueError(
            f"a Linear with {fc.in_features} inputs cannot read a {in_channels} x {kernel_size} x {kernel_size} "
            f"window ({in_channels * kernel_size ** 2} values); pass the in_channels and kernel_size it was trained on"
        )
    conv = nn.Conv2d(in_channels, fc.out_features, kernel_size, bias=fc.bias is not None)
    weight, bias = subsample_fc(fc.weight.detach(), None if fc.bias is None else fc.bias.detach(), conv, kernel_size)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def subsample_fc(fc_weight: torch.Tensor, fc_bias: torch.Tensor | None, conv: nn.Conv2d,
                 in_kernel: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A fully connected layer's weights as `conv`'s, subsampled the way DeepLab v1 initialises fc6/fc7.

    `fc_weight` [out, in * in_kernel**2] reads a C x k x k window (channel-major, like nn.Flatten); viewed as
    a [out, C, k, k] kernel (FCN Sec. 3.1: convolutionalization) it is then decimated (DeepLab v1 Sec. 3.2,
    "spatially subsampling (by simple decimation) the first FC layer"): the kernel spatially to `conv`'s size
    (7x7 -> 4x4 keeps taps 0, 2, 4, 6; 7x7 -> 3x3 keeps 0, 3, 6) and the filters every (out / conv.out_channels)-th
    (LargeFOV: 1,024 of 4,096), the input channels likewise. At the same size it is FCN's exact convolutionalization.
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


def bilinear_kernel(factor: int) -> torch.Tensor:
    """The 2f x 2f bilinear tent `(1 - |x - (f - 0.5)| / f)` outer product (FCN's `upsample_filt`, Sec. 3.3)."""
    x = torch.arange(2 * factor, dtype=torch.float32)
    tent = 1 - (x - (factor - 0.5)).abs() / factor
    return tent[:, None] * tent[None, :]


class BilinearUpsampler(nn.ConvTranspose2d):
    """A transposed convolution that runs in fp32 under autocast: torch's CPU kernel for a grouped transposed
    convolution in bf16 is 7x slower than in fp32.

    While its kernel is the fixed bilinear tent (FCN's final upsampling), it is computed as two matrix products,
    scores -> A @ scores @ B^T, where A and B hold the 1-D tent at each output row and column: the same sums as the
    transposed convolution, because the tent kernel is an outer product. On a CPU that is 3.5x faster, forward and
    backward; the grouped transposed convolution was a third of an FCN-32s training step (benchmarks/RESULTS.md).
    A learned kernel (FCN's 2x upsampling) stays a transposed convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            if self.weight.requires_grad or not self._is_tent():
                return super().forward(x)
            rows, cols = (self._tent_matrix(n, x.device) for n in x.shape[-2:])
            return rows @ x @ cols.T

    def _is_tent(self) -> bool:
        key = (self.weight.data_ptr(), self.weight._version)  # checked again whenever the weight changes
        if getattr(self, "_tent_key", None) != key:
            factor = self.stride[0]
            self._tent = (self.bias is None and self.stride == (factor, factor) and self.padding == (factor // 2,) * 2
                          and self.groups == self.in_channels == self.out_channels
                          and self.kernel_size == (2 * factor, 2 * factor) and self.output_padding == (0, 0)
                          and torch.equal(self.weight.detach().cpu(), bilinear_kernel(factor).expand_as(self.weight)))
            self._tent_key = key
        return self._tent

    def _tent_matrix(self, n: int, device) -> torch.Tensor:
        """[n_out, n]: output position o takes input cell i with weight tent[o + padding - f * i] (0 off the tent)."""
        f, pad = self.stride[0], self.padding[0]
        o = torch.arange((n - 1) * f - 2 * pad + 2 * f, device=device)[:, None]
        d = o + pad - f * torch.arange(n, device=device)[None, :]
        tent = 1 - (d.float() - (f - 0.5)).abs() / f
        return torch.where((d >= 0) & (d < 2 * f), tent, torch.zeros((), device=device))


def bilinear_upsampler(channels: int, factor: int, fixed: bool = False) -> BilinearUpsampler:
    """FCN Sec. 3.3: in-network upsampling, a transposed convolution of stride f initialised to bilinear.

    Kernel 2f with the tent `1 - |x - (f - 0.5)| / f`, one per class (groups = classes: a class's scores are
    interpolated from that class's scores only, the diagonal of FCN's `upsample_filt` matrix; 134M parameters
    for FCN-32s as in FCN Table 1). Padding f/2 aligns the grids: input cell i, centred at f*i + (f-1)/2 on the
    output, is where the tent peaks, so n cells become exactly n*f outputs, no crop needed. `fixed`: not learned
    (Sec. 4.3: "final layer deconvolutional filters are fixed to bilinear interpolation, while intermediate
    upsampling layers are initialized to bilinear upsampling, and then learned").
    """
    up = BilinearUpsampler(channels, channels, 2 * factor, stride=factor, padding=factor // 2, groups=channels,
                           bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(factor).expand_as(up.weight))
    up.fixed = fixed  # part of the architecture: whoever trains the network leaves it as it is
    return up.requires_grad_(not fixed)


class FCNHead(nn.Module):
    """fc6 (7x7, 4096) and fc7 (1x1, 4096) convolutionalized (FCN Sec. 3.1), the class scores `score_fr`, and
    the skip architecture (Sec. 4.2, Fig. 3): `skips` = 0 (FCN-32s), 1 (FCN-16s: + pool4), 2 (FCN-8s: + pool3).

    Input: pool5 and the list of pool outputs, from an input whose sides are a multiple of 32 (the model pads),
    so that every map is exactly twice the next coarser one and each 2x upsampling lands on the skip's grid.
    Output: class scores at the (padded) input size. fc6 is padded by 3 so the score map has one cell per
    32 x 32 input block (the paper pads conv1_1 by 100 and crops instead; see `dlcore.models.FCN`).
    """

    def __init__(self, in_channels: int, pool_channels: list[int], num_classes: int, width: float = 1.0,
                 skips: int = 0):
        super().__init__()
        if skips not in (0, 1, 2):
            raise ValueError(f"skips must be 0 (FCN-32s), 1 (FCN-16s) or 2 (FCN-8s), got {skips!r}")
        hidden = scaled(4096, width)
        self.skips = skips
        self.fc6 = _kaiming(nn.Conv2d(in_channels, hidden, 7, padding=3))
        self.fc7 = _kaiming(nn.Conv2d(hidden, hidden, 1))
        self.relu = nn.ReLU(inplace=True)
        self.drop = Dropout(0.5)
        self.score_fr = _zero(nn.Conv2d(hidden, num_classes, 1))
        if skips == 0:
            self.upscore = bilinear_upsampler(num_classes, 32, fixed=True)
            return
        self.upscore2 = bilinear_upsampler(num_classes, 2)
        self.score_pool4 = _zero(nn.Conv2d(pool_channels[3], num_classes, 1))
        if skips == 1:
            self.upscore16 = bilinear_upsampler(num_classes, 16, fixed=True)
            return
        self.score_pool3 = _zero(nn.Conv2d(pool_channels[2], num_classes, 1))
        self.upscore_pool4 = bilinear_upsampler(num_classes, 2)
        self.upscore8 = bilinear_upsampler(num_classes, 8, fixed=True)

    def forward(self, pool5: torch.Tensor, pools: list[torch.Tensor]) -> torch.Tensor:
        x = self.drop(self.relu(self.fc6(pool5)))
        x = self.drop(self.relu(self.fc7(x)))
        scores = self.score_fr(x)
        if self.skips == 0:
            return self.upscore(scores)
        scores = self.upscore2(scores) + self.score_pool4(pools[3])  # fuse by sum (Sec. 4.2)
        if self.skips == 1:
            return self.upscore16(scores)
        scores = self.upscore_pool4(scores) + self.score_pool3(pools[2])
        return self.upscore8(scores)

    def classifier_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n.startswith("score_")]

    def imagenet_fc_layers(self) -> list[tuple[str, nn.Conv2d]]:
        return [("fc6", self.fc6), ("fc7", self.fc7)]


# -------------------------------------------------------------------------------------------- DeepLab v1

def msc_mlp(in_channels: int, stride: int, width: float = 1.0) -> nn.Sequential:
    """DeepLab v1 Sec. 4.3 (MSc): 128 3x3 filters then 128 1x1, ReLU and dropout after each.

    The 3x3 conv's stride brings its input to the stride-8 grid of fc7 (the Caffe MSc model's strided first
    layer): 8 on the image, 4 on pool1, 2 on pool2, 1 on pool3 and pool4 (3x3, padding 1: ceil(n / stride)
    cells, the same count as the trunk's 3x3 pad-1 pools give).
    """
    c = scaled(128, width)
    return nn.Sequential(_kaiming(nn.Conv2d(in_channels, c, 3, stride=stride, padding=1)), nn.ReLU(inplace=True),
                         Dropout(0.5), _kaiming(nn.Conv2d(c, c, 1)), nn.ReLU(inplace=True), Dropout(0.5))


class DeepLabV1Head(nn.Module):
    """fc6 (k x k at rate r, atrous), fc7 (1x1), fc8 (1x1 to the classes), per DeepLab v1 Table 2:
    7x7 r4 4096; 4x4 r4 4096; 4x4 r8 4096; 3x3 r12 1024 (LargeFOV). ReLU and dropout 0.5 after fc6 and fc7.

    `msc=True` (Sec. 4.3, "multi-scale prediction"): `msc_mlp`s on the image and pool1..pool4 (640 channels
    at width 1) concatenated with fc7's output into fc8, as the paper concatenates them "to the main
    network's last layer feature map" (a 1x1 fc8 on the concatenation = the sum of one per part).
    """

    def __init__(self, in_channels: int, num_classes: int, *, kernel: int, rate: int, channels: int,
                 width: float = 1.0, msc_inputs: list[int] | None = None):
        super().__init__()
        hidden = scaled(channels, width)
        # (k-1)*r total padding keeps the map size, split evenly (even kernels too: (k-1)*r is even here)
        self.fc6 = _kaiming(nn.Conv2d(in_channels, hidden, kernel, padding=(kernel - 1) * rate // 2, dilation=rate))
        self.fc7 = _kaiming(nn.Conv2d(hidden, hidden, 1))
        self.relu = nn.ReLU(inplace=True)
        self.drop = Dropout(0.5)
        self.msc = None
        if msc_inputs is not None:
            strides = (8, 4, 2, 1, 1)  # image, pool1, pool2, pool3, pool4 -> stride 8
            self.msc = nn.ModuleList(msc_mlp(c, s, width) for c, s in zip(msc_inputs, strides))
        extra = 0 if self.msc is None else sum(m[3].out_channels for m in self.msc)
        self.fc8 = _classifier(nn.Conv2d(hidden + extra, num_classes, 1))

    def forward(self, x: torch.Tensor, msc_inputs: list[torch.Tensor] | None = None) -> torch.Tensor:
        x = self.drop(self.relu(self.fc6(x)))
        x = self.drop(self.relu(self.fc7(x)))
        if self.msc is not None:
            x = torch.cat([x] + [mlp(f) for mlp, f in zip(self.msc, msc_inputs)], dim=1)
        return self.fc8(x)

    def classifier_parameters(self) -> list[nn.Parameter]:
        return list(self.fc8.parameters())

    def imagenet_fc_layers(self) -> list[tuple[str, nn.Conv2d]]:
        return [("fc6", self.fc6), ("fc7", self.fc7)]


# ------------------------------------------------------------------------------------------- DeepLab v2

def vgg_branch(in_channels: int, num_classes: int, rate: int, width: float = 1.0) -> nn.Sequential:
    """DeepLab v2 Fig. 7: one ASPP branch on VGG-16: fc6 (3x3, rate r, 1024) -> fc7 (1x1, 1024) -> fc8."""
    c = scaled(1024, width)
    return nn.Sequential(_kaiming(nn.Conv2d(in_channels, c, 3, padding=rate, dilation=rate)), nn.ReLU(inplace=True),
                         Dropout(0.5), _kaiming(nn.Conv2d(c, c, 1)), nn.ReLU(inplace=True), Dropout(0.5),
                         _classifier(nn.Conv2d(c, num_classes, 1)))


def resnet_branch(in_channels: int, num_classes: int, rate: int) -> nn.Sequential:
    """DeepLab v2 on ResNet-101: each ASPP branch is one 3x3 atrous conv straight to the classes."""
    return nn.Sequential(_classifier(nn.Conv2d(in_channels, num_classes, 3, padding=rate, dilation=rate)))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling as in DeepLab v2 (Sec. 3.2, Fig. 4): parallel branches at rates r_k on
    the same feature map, each predicting class scores, fused by **sum** (not v3's concatenation).
    ASPP-S: rates (2, 4, 8, 12); ASPP-L: (6, 12, 18, 24); LargeFOV: the one branch at rate 12."""

    def __init__(self, branches: list[nn.Sequential]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    @property
    def rates(self) -> tuple[int, ...]:
        return tuple(b[0].dilation[0] for b in self.branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out

    def classifier_parameters(self) -> list[nn.Parameter]:
        return [p for b in self.branches for p in b[-1].parameters()]  # fc8 (VGG) / the one conv (ResNet)

    def imagenet_fc_layers(self) -> list[tuple[str, nn.Conv2d]]:
        # VGG branches start from VGG-16's subsampled fc6/fc7 (as LargeFOV); ResNet branches have none.
        return [pair for b in self.branches if len(b) > 1 for pair in (("fc6", b[0]), ("fc7", b[3]))]
