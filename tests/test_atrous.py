"""dlcore.atrous: the hole algorithm against PyTorch's dilated conv, shift-and-stitch and brute force."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dlcore.atrous import (
    atrous_conv2d, count_macs, exact_region, layer_geometry, make_dense, receptive_field, shift_and_stitch,
    tap_counts, tap_positions, upsample_filter,
)

torch.set_num_threads(2)


def _random_case(gen):
    """A random (x, weight, bias, rate, padding, groups) with odd/non-square sizes, big enough for the rate."""
    groups = int(torch.randint(1, 4, (1,), generator=gen))
    c_in, c_out = groups * int(torch.randint(1, 4, (1,), generator=gen)), groups * int(torch.randint(1, 4, (1,), generator=gen))
    kh, kw = (int(v) for v in torch.randint(1, 6, (2,), generator=gen))
    rate = int(torch.randint(1, 25, (1,), generator=gen))
    padding = (int(torch.randint(0, 2 * rate, (1,), generator=gen)), int(torch.randint(0, 2 * rate, (1,), generator=gen)))
    h = rate * (kh - 1) + 1 - 2 * padding[0] + int(torch.randint(0, 9, (1,), generator=gen))
    w = rate * (kw - 1) + 1 - 2 * padding[1] + int(torch.randint(0, 9, (1,), generator=gen))
    x = torch.randn(2, c_in, max(h, 1), max(w, 1), generator=gen)
    weight = torch.randn(c_out, c_in // groups, kh, kw, generator=gen)
    bias = torch.randn(c_out, generator=gen)
    return x, weight, bias, rate, padding, groups


@pytest.mark.parametrize("seed", range(40))
def test_atrous_conv2d_equals_dilated_conv(seed):
    x, weight, bias, rate, padding, groups = _random_case(torch.Generator().manual_seed(seed))
    expected = F.conv2d(x, weight, bias, padding=padding, dilation=rate, groups=groups)
    got = atrous_conv2d(x, weight, bias, rate=rate, padding=padding, groups=groups)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rate", [1, 2, 5, 12, 24])
def test_atrous_conv2d_every_rate_square_padding(rate):
    gen = torch.Generator().manual_seed(rate)
    x, weight = torch.randn(1, 3, 51, 50, generator=gen), torch.randn(4, 3, 3, 3, generator=gen)
    torch.testing.assert_close(atrous_conv2d(x, weight, rate=rate, padding=rate),
                               F.conv2d(x, weight, padding=rate, dilation=rate), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rate", [0, -2, 1.5, "2", True, None])
def test_invalid_rate_is_a_clear_error(rate):
    with pytest.raises(ValueError, match="rate must be an integer"):
        atrous_conv2d(torch.zeros(1, 1, 9, 9), torch.zeros(1, 1, 3, 3), rate=rate)
    with pytest.raises(ValueError, match="rate must be an integer"):
        upsample_filter(torch.zeros(1, 1, 3, 3), rate)


def test_channel_mismatch_names_the_shapes():
    with pytest.raises(ValueError, match=r"\(1, 4, 9, 9\).*\(2, 3, 3, 3\)"):
        atrous_conv2d(torch.zeros(1, 4, 9, 9), torch.zeros(2, 3, 3, 3))
    with pytest.raises(ValueError, match="groups=2"):
        atrous_conv2d(torch.zeros(1, 4, 9, 9), torch.zeros(3, 2, 3, 3), groups=2)  # 3 outputs, 2 groups


def test_too_small_input_and_bad_dims_are_clear_errors():
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        atrous_conv2d(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 3, 3), rate=4)
    with pytest.raises(ValueError, match=r"x \[B,C,H,W\]"):
        atrous_conv2d(torch.zeros(1, 9, 9), torch.zeros(1, 1, 3, 3))


@pytest.mark.parametrize("rate", [1, 2, 3, 7])
def test_upsampled_filter_conv_equals_atrous_conv(rate):
    gen = torch.Generator().manual_seed(rate)
    x, weight = torch.randn(2, 4, 33, 29, generator=gen), torch.randn(6, 2, 3, 2, generator=gen)
    up = upsample_filter(weight, rate)
    assert up.shape == (6, 2, 2 * rate + 1, rate + 1)
    assert torch.count_nonzero(up) == torch.count_nonzero(weight)  # only zeros were inserted
    torch.testing.assert_close(F.conv2d(x, up, padding=(rate, 0), groups=2),
                               atrous_conv2d(x, weight, rate=rate, padding=(rate, 0), groups=2), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- dense evaluation

def _small_stack(padding):
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=padding), nn.ReLU(), nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(4, 5, 3, padding=padding), nn.ReLU()), nn.MaxPool2d(3, 2, padding=padding),
        nn.Conv2d(5, 3, 3, padding=padding, stride=2),
    ).double()


def test_dense_equals_shift_and_stitch_everywhere_without_padding():
    net = _small_stack(padding=0)
    x = torch.randn(2, 3, 47, 42, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense, stitched = make_dense(net)(x), shift_and_stitch(net, x)
    assert receptive_field(layer_geometry(net)).stride == 8
    assert exact_region(net, x.shape[2:]) == (slice(0, dense.shape[2]), slice(0, dense.shape[3]))
    assert dense.shape == stitched.shape and not torch.isnan(stitched).any()
    torch.testing.assert_close(dense, stitched, atol=1e-12, rtol=0)


def test_dense_equals_shift_and_stitch_inside_the_exact_region_with_padding():
    net = _small_stack(padding=1)
    x = torch.randn(1, 3, 53, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense, stitched = make_dense(net)(x), shift_and_stitch(net, x)
    rows, cols = exact_region(net, x.shape[2:])
    assert rows.stop - rows.start >= 8 and cols.stop - cols.start >= 8
    torch.testing.assert_close(dense[..., rows, cols], stitched[..., rows, cols], atol=1e-12, rtol=0)
    # Outside it the shifted zero padding does show: the region is where it must hold, not decoration.
    assert (dense[..., : stitched.shape[2], : stitched.shape[3]] - stitched).abs().nan_to_num().max() > 1e-6


@pytest.mark.parametrize("end, size", [(10, 40), (17, 60)])  # VGG-16 up to pool2 (stride 4), pool3 (stride 8)
def test_dense_vgg16_slice_equals_shift_and_stitch(end, size):
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16().features[:end].double().eval()
    x = torch.randn(1, 3, size, size + 3, dtype=torch.float64)
    with torch.no_grad():
        dense, stitched = make_dense(vgg)(x), shift_and_stitch(vgg, x)
    rows, cols = exact_region(vgg, x.shape[2:])
    assert rows.stop > rows.start and cols.stop > cols.start
    torch.testing.assert_close(dense[..., rows, cols], stitched[..., rows, cols], atol=1e-10, rtol=0)


def test_make_dense_shares_weights_and_leaves_the_original_alone():
    net = _small_stack(padding=1)
    dense = make_dense(net)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    dense_convs = [m for m in dense.modules() if isinstance(m, nn.Conv2d)]
    assert all(a.weight is b.weight for a, b in zip(convs, dense_convs))
    assert [c.stride for c in convs] == [(1, 1), (1, 1), (2, 2)]  # untouched
    assert [c.dilation for c in dense_convs] == [(1, 1), (2, 2), (4, 4)]  # after pool /2: 2, after pool /2: 4
    assert [c.padding for c in dense_convs] == [(1, 1), (2, 2), (4, 4)]
    pools = [m for m in dense.modules() if isinstance(m, nn.MaxPool2d)]
    assert [(p.stride, p.dilation) for p in pools] == [(1, 1), (1, 2)]


def test_make_dense_rejects_layers_without_dilation():
    with pytest.raises(ValueError, match="AvgPool2d"):
        make_dense(nn.Sequential(nn.Conv2d(1, 1, 3), nn.AvgPool2d(2)))


def test_make_dense_keeps_the_structure_and_names():
    """Nested Sequentials stay nested under their names, so the strided net's state dict loads into the dense one."""
    net = _small_stack(padding=1)
    dense = make_dense(net)
    assert isinstance(dense[3], nn.Sequential) and dense[3][0].dilation == (2, 2)
    dense.load_state_dict(net.state_dict())
    assert list(dense.state_dict()) == list(net.state_dict())
    single = make_dense(nn.Conv2d(1, 1, 3, stride=2))  # one layer: a chain of one, its stride removed
    assert isinstance(single, nn.Sequential) and single[0].stride == (1, 1)


def _residual_stack():
    """A stem and three torchvision residual blocks, two of them strided: a ResNet in miniature."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    def shortcut(c_in, c_out):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=2, bias=False), nn.BatchNorm2d(c_out))

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                        Bottleneck(8, 2, stride=2, downsample=shortcut(8, 8)), BasicBlock(8, 8),
                        Bottleneck(8, 4, stride=2, downsample=shortcut(8, 16)), Bottleneck(16, 4))
    for m in net.modules():  # statistics that are not the identity, so batch norm takes part
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.double().eval()


def test_dense_residual_blocks_equal_shift_and_stitch():
    """The hole algorithm through torchvision's residual blocks: main path and shortcut made dense alike."""
    net = _residual_stack()
    dense = make_dense(net)
    assert [b.conv2.dilation for b in dense[2:]] == [(1, 1), (2, 2), (2, 2), (4, 4)]
    assert dense[2].downsample[0].stride == (1, 1) and net[2].downsample[0].stride == (2, 2)
    x = torch.randn(1, 3, 61, 58, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out, stitched = dense(x), shift_and_stitch(net, x, s=4)
    m = 24  # beyond the receptive field's reach (about 45 px) from the zero padding of any shift
    torch.testing.assert_close(out[..., m:-m, m:-m], stitched[..., m:-m, m:-m], atol=1e-12, rtol=0)
    dense.load_state_dict(net.state_dict())  # the same names: ResNet weights load into the dense trunk
    with pytest.raises(ValueError, match="block_rate"):
        make_dense(net, block_rate=1)


def test_block_rate_is_the_caffe_models_rate_and_the_hole_algorithm_where_the_1x1_strides():
    """block_rate=True (DeepLab v2's ResNet-101): a block whose stride is removed runs at the new rate, its first
    3x3 included. Where the stride sits on the block's 1x1 conv (Caffe's ResNet), that is the hole algorithm."""
    net = _residual_stack()
    deeplab = make_dense(net, output_stride=2, block_rate=True)
    assert [b.conv2.dilation for b in deeplab[2:]] == [(1, 1), (1, 1), (2, 2), (2, 2)]
    assert deeplab[4].conv2.stride == (1, 1) and deeplab[4].downsample[0].stride == (1, 1)
    assert deeplab[2].conv2.stride == (2, 2)  # the first stride fits in output_stride 2: kept
    for block in (net[2], net[4]):  # the Caffe layout: stride on the 1x1 conv
        block.conv1.stride, block.conv2.stride = block.conv2.stride, block.conv1.stride
    proper, caffe = make_dense(net, output_stride=2), make_dense(net, output_stride=2, block_rate=True)
    geometry = lambda n: [(m.stride, m.dilation, m.padding) for m in n.modules() if isinstance(m, nn.Conv2d)]  # noqa: E731
    assert geometry(proper) == geometry(caffe)
    x = torch.randn(1, 3, 40, 40, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(proper(x), caffe(x), atol=0, rtol=0)


def test_make_dense_refuses_a_block_whose_shortcut_does_not_subsample():
    from torchvision.models.resnet import BasicBlock

    with pytest.raises(ValueError, match="shortcut subsamples differently"):
        make_dense(nn.Sequential(BasicBlock(4, 4, stride=2)))


# ------------------------------------------------------------------------------------------- receptive fields

def _gradient_support(net, size, dense_rounds=1):
    """Brute force: input pixels whose gradient reaches the centre output unit (union over random inputs)."""
    support = torch.zeros(size, size, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    for _ in range(dense_rounds):
        x = torch.randn(1, 1, size, size, dtype=torch.float64, generator=gen, requires_grad=True)
        y = net(x)
        y[0, 0, y.shape[2] // 2, y.shape[3] // 2].backward()
        support |= x.grad[0, 0] != 0
    return support


@pytest.mark.parametrize("seed", range(6))
def test_receptive_field_matches_gradient_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(int(torch.randint(1, 5, (1,), generator=gen))):
        k, s, d = (int(torch.randint(1, 4, (1,), generator=gen)) for _ in range(3))
        conv = nn.Conv2d(1, 1, k, stride=s, dilation=d, bias=False).double()
        nn.init.constant_(conv.weight, 1.0)  # positive weights, no ReLU: no gradient cancels by chance
        layers.append(conv)
    net = nn.Sequential(*layers)
    rf = receptive_field(layer_geometry(net))
    size = rf.size + 3 * rf.stride
    support = _gradient_support(net, size)
    rows, cols = np.nonzero(support.numpy())
    assert rows.max() - rows.min() + 1 == rf.size and cols.max() - cols.min() + 1 == rf.size
    out_len = (size - rf.size) // rf.stride + 1  # the unit probed is the middle one of the output
    assert rows.min() == cols.min() == rf.offset + rf.stride * (out_len // 2)


def test_receptive_field_with_max_pools_matches_brute_force():
    # A max-pool passes gradient to its argmax only, so take the union over many random inputs.
    net = nn.Sequential(nn.Conv2d(1, 1, 3, bias=False), nn.MaxPool2d(2), nn.Conv2d(1, 1, 3, dilation=2, bias=False),
                        nn.MaxPool2d(3, 2)).double()
    for conv in (net[0], net[2]):
        nn.init.constant_(conv.weight, 1.0)
    rf = receptive_field(layer_geometry(net))
    assert rf == (16, 4, 0)  # 3, +1 (pool), +2*2*2 (rate 2 at stride 2), +2*2 (pool)
    support = _gradient_support(net, size=40, dense_rounds=64).numpy()
    rows, cols = np.nonzero(support)
    assert rows.max() - rows.min() + 1 == rf.size and cols.max() - cols.min() + 1 == rf.size


def test_receptive_field_of_vgg16_is_the_published_one():
    features = torchvision.models.vgg16().features
    assert receptive_field(layer_geometry(features)) == (212, 32, -90)  # pool5: 212 px, stride 32
    dense = make_dense(features[:23])  # DeepLab-v1 skips pool4 and pool5 subsampling: stride 8 ...
    assert receptive_field(layer_geometry(dense)).stride == 1
    assert receptive_field(layer_geometry(features[:23])).size == receptive_field(layer_geometry(dense)).size


def test_receptive_field_rejects_bad_layers():
    with pytest.raises(ValueError, match="kernel, stride, dilation"):
        receptive_field([(3, 1)])
    with pytest.raises(ValueError, match=">= 1"):
        receptive_field([(3, 0, 1)])


# ------------------------------------------------------------------------------------------------ cost, taps

def test_atrous_costs_the_same_macs_per_output_as_plain_conv():
    x = torch.zeros(1, 8, 30, 30)
    plain, atrous = nn.Conv2d(8, 4, 3, padding=1), nn.Conv2d(8, 4, 3, padding=6, dilation=6)
    assert count_macs(plain, x) == count_macs(atrous, x) == 30 * 30 * 4 * 8 * 9
    upsampled = nn.Conv2d(8, 4, 13, padding=6)  # the zero-inserted 13 x 13 kernel multiplies its zeros
    assert count_macs(upsampled, x) == count_macs(atrous, x) * 13 * 13 // 9
    assert count_macs(nn.Conv2d(8, 4, 3, groups=4), x) == 28 * 28 * 4 * 2 * 9


def test_gridding_of_equal_rates_and_no_holes_for_mixed_rates():
    grid = tap_counts([2, 2, 2])
    assert grid.shape == (13, 13) and grid.sum() == 9 ** 3
    assert (grid[1::2, :] == 0).all() and (grid[:, 1::2] == 0).all() and (grid[::2, ::2] > 0).all()
    mixed = tap_counts([1, 2, 3])
    assert mixed.shape == (13, 13) and (mixed > 0).all()  # rates without a common factor fill the field


def test_tap_positions_are_rate_apart():
    taps = tap_positions((10, 20), rate=4)
    assert taps.shape == (9, 2) and tuple(taps[0]) == (6, 16) and tuple(taps[-1]) == (14, 24)
    assert set(np.diff(np.unique(taps[:, 0]))) == {4}


def test_output_stride_keeps_the_first_strides():
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16().features[:23].double().eval()  # to conv4_3: strides 2, 2, 2 (pool1-3)
    net = nn.Sequential(*vgg, nn.MaxPool2d(3, 2, 1), nn.Conv2d(512, 4, 3, padding=1)).double()
    os8 = make_dense(net, output_stride=8)
    assert receptive_field(layer_geometry(os8)).stride == 8
    assert [m.dilation for m in os8 if isinstance(m, nn.Conv2d)][-1] == (2, 2)  # after the skipped pool4
    x = torch.randn(1, 3, 64, 61, dtype=torch.float64)
    with torch.no_grad():
        dense, strided = make_dense(net)(x), net(x)
        # Every 16th dense output is the strided net's output, padding included (same grid, same zeros) ...
        torch.testing.assert_close(dense[..., ::16, ::16], strided, atol=1e-10, rtol=0)
        # ... and output stride 8 is every 8th dense output.
        torch.testing.assert_close(dense[..., ::8, ::8], os8(x), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="output_stride"):
        make_dense(net, output_stride=0)


def test_make_dense_can_keep_pools_undilated_as_the_caffe_model():
    """dilate_pools=False (DeepLab's released pool5): a pool loses its stride but keeps its window and padding;
    the layers after it still get the rate, and the weights are shared. VGG16(dense=True) is built this way."""
    net = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.MaxPool2d(3, 2, padding=1), nn.Conv2d(1, 1, 3, padding=1),
                        nn.MaxPool2d(3, 2, padding=1), nn.Conv2d(1, 1, 3, padding=1))
    dense = make_dense(net, dilate_pools=False)
    assert len(dense) == len(net)  # no padding layers inserted: a trunk's state-dict keys stay the same
    assert (dense[3].stride, dense[3].padding, dense[3].dilation) == (1, 1, 1)
    assert dense[2].dilation == (2, 2) and dense[4].dilation == (4, 4) and dense[4].padding == (4, 4)
    assert dense[4].weight is net[4].weight
    proper = make_dense(net)  # the hole algorithm itself dilates the second pool by 2
    assert any(isinstance(m, nn.MaxPool2d) and m.dilation == 2 for m in proper.modules())
    with pytest.raises(ValueError, match="dilate_pools"):
        make_dense(net, dilate_pools="no")


@pytest.mark.parametrize("kernel_size,rate,n", [(3, 12, 32), (4, 4, 32), (7, 4, 32), (4, 8, 32), (3, 24, 32), (3, 12, 65)])
def test_valid_tap_fraction_counts_the_taps_a_convolution_reads_inside_the_map(kernel_size, rate, n):
    """A dilated all-ones filter over an all-ones map, padded with zeros: its mean output is the share of taps inside."""
    from dlcore.atrous import valid_tap_fraction

    pad = (kernel_size - 1) * rate // 2
    out = torch.nn.functional.conv2d(torch.ones(1, 1, n, n), torch.ones(1, 1, kernel_size, kernel_size),
                                     padding=pad, dilation=rate)
    assert out.shape[-1] == n
    assert valid_tap_fraction(rate, n, kernel_size) == pytest.approx(out.mean().item() / kernel_size ** 2)
