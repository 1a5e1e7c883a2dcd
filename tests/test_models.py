"""dlcore.models / heads / backbones: every network of the papers builds, has its paper geometry and sizes,
loads torchvision weights, and the heads do what the papers say (skip fusion, bilinear init, ASPP sum, MSC max).

Small on purpose: width 0.0625, inputs up to 65 px; width 1.0 only to count parameters or copy weights."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dlcore.backbones import ResNet101, VGG16
from dlcore.heads import bilinear_kernel, bilinear_upsampler, subsample_fc
from dlcore.imagenet import imagenet_weights, load_torchvision_weights
from dlcore.models import MSC, available, build_model, fov_table

torch.set_num_threads(1)
W = 0.0625


def _eval_forward(model, x):
    with torch.no_grad():
        return model.eval()(x)


# ------------------------------------------------------------------------------------------- every model

def test_available_lists_the_papers_networks():
    names = available()
    assert names[:3] == ["fcn32s", "fcn16s", "fcn8s"]
    for v in ("7x7", "4x4", "4x4-r8", "largefov"):
        assert f"deeplab-v1-{v}" in names and f"deeplab-v1-{v}-msc" in names
    for v in ("vgg-largefov", "vgg-aspp-s", "vgg-aspp-l", "resnet101-largefov", "resnet101-aspp-l"):
        assert f"deeplab-v2-{v}" in names and f"deeplab-v2-{v}-msc" in names
    assert len(names) == 3 + 8 + 10


@pytest.mark.parametrize("name", available())
def test_every_model_returns_logits_at_the_input_size(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5, width=W)
    x = torch.randn(2, 3, 33, 47)  # odd, non-square, not a multiple of any stride
    out = _eval_forward(model, x)
    assert out.shape == (2, 5, 33, 47) and torch.isfinite(out).all()
    assert (model.name, model.num_classes, model.width) == (name, 5, W)
    assert isinstance(model.options, dict)
    ids = {id(p) for p in model.parameters()}
    assert model.classifier_parameters() and all(id(p) in ids for p in model.classifier_parameters())
    if name.startswith("deeplab"):
        assert hasattr(model, "head")
    model.train()
    out = model(x)
    if name.startswith("deeplab-v2") and name.endswith("-msc"):
        assert isinstance(out, list) and len(out) == 4  # fused + scales 0.5, 0.75, 1
        assert all(o.shape == (2, 5, 33, 47) for o in out)
    else:
        assert out.shape == (2, 5, 33, 47)


@pytest.mark.parametrize("name, stride", [("fcn32s", 32), ("fcn16s", 16), ("fcn8s", 8), ("deeplab-v1-largefov", 8),
                                          ("deeplab-v2-vgg-aspp-l", 8), ("deeplab-v2-resnet101-aspp-l", 8)])
def test_output_stride_is_the_score_maps_stride(name, stride):
    model = build_model(name, num_classes=3, width=W)
    assert model.output_stride == stride
    if name.startswith("deeplab"):
        with torch.no_grad():
            assert model.eval().scores(torch.zeros(1, 3, 64, 64)).shape[-1] == 64 // stride


@pytest.mark.parametrize("output_stride, rates", [(8, [1, 1, 2, 4]), (16, [1, 1, 1, 2])])
def test_resnet_output_stride_and_stage_rates(output_stride, rates):
    """DeepLab v2: OS 8 = layer3 rate 2, layer4 rate 4; OS 16 = layer4 rate 2, every block of the stage."""
    model = build_model("deeplab-v2-resnet101-aspp-l", num_classes=3, width=W, output_stride=output_stride)
    assert model.output_stride == output_stride and model.options["output_stride"] == output_stride
    for stage, rate in zip((model.backbone.layer1, model.backbone.layer2, model.backbone.layer3,
                            model.backbone.layer4), rates):
        assert {block.conv2.dilation[0] for block in stage} == {rate}
    with torch.no_grad():
        assert model.backbone(torch.zeros(1, 3, 64, 64)).shape[-1] == 64 // output_stride


def test_output_stride_8_and_16_share_one_state_dict():
    os8 = build_model("deeplab-v2-resnet101-aspp-l", num_classes=3, width=W, output_stride=8)
    os16 = build_model("deeplab-v2-resnet101-aspp-l", num_classes=3, width=W, output_stride=16)
    os8.load_state_dict(os16.state_dict())
    x = torch.randn(1, 3, 40, 40)
    assert not torch.allclose(_eval_forward(os8, x), _eval_forward(os16, x))  # same weights, different sampling


def test_deeplab_v1_trunk_is_the_papers_surgery():
    trunk = VGG16(W, dense=True)
    pools = [m for m in trunk.features if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.padding) for p in pools] == [(3, 2, 1)] * 3 + [(3, 1, 1)] * 2
    convs = [m for m in trunk.features if isinstance(m, nn.Conv2d)]
    assert [c.dilation[0] for c in convs] == [1] * 10 + [2] * 3
    assert [c.out_channels for c in convs] == [4, 4, 8, 8, 16, 16, 16, 32, 32, 32, 32, 32, 32]
    # torchvision's names, so torchvision state dicts fit
    with torch.device("meta"):
        names = torchvision.models.vgg16().features.state_dict()
    assert set(trunk.state_dict()) == {f"features.{k}" for k in names}


# ---------------------------------------------------------------------------------------- fov table

def test_fov_table_is_deeplab_v1_table_2():
    table = fov_table()
    got = [(r["kernel"], r["input_stride"], r["receptive_field"], r["params"]) for r in table]
    assert got == [("7x7", 4, 224, "134.3M"), ("4x4", 4, 128, "65.1M"), ("4x4", 8, 224, "65.1M"),
                   ("3x3", 12, 224, "20.5M")]
    vgg_convs = 14_714_688  # torchvision VGG-16 features
    for row, (k, c) in zip(table, [(7, 4096), (4, 4096), (4, 4096), (3, 1024)]):
        fc = 512 * k * k * c + c + c * c + c + c * 21 + 21  # fc6 + fc7 + fc8 (21 classes)
        assert row["params_exact"] == vgg_convs + fc
        assert row["full_receptive_field"] > row["receptive_field"]
        assert set(row) == {"name", "kernel", "input_stride", "receptive_field", "full_receptive_field", "params",
                            "params_exact"}


def test_fcn32s_has_the_papers_parameter_count():
    """FCN Table 1: FCN-VGG16 has 134M parameters = VGG-16 minus its 1000-class fc8, plus 21-class scores."""
    with torch.device("meta"):
        vgg = torchvision.models.vgg16(weights=None)
        fcn = build_model("fcn32s", num_classes=21)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    upsampler = 21 * 64 * 64  # one bilinear 64x64 kernel per class
    assert count(fcn) == count(vgg) - count(vgg.classifier[6]) + (4096 * 21 + 21) + upsampler
    assert round(count(fcn) / 1e6) == 134


def test_width_scales_hidden_channels_never_the_classes():
    model = build_model("deeplab-v2-vgg-aspp-l", num_classes=7, width=0.125)
    for branch in model.head.branches:
        assert branch[0].out_channels == 128 and branch[3].out_channels == 128 and branch[-1].out_channels == 7
    with torch.device("meta"):
        v1 = build_model("deeplab-v1-largefov-msc", num_classes=21)
    assert v1.head.fc8.in_channels == 1024 + 640  # fc7 + MSc's five 128-channel MLPs
    assert [m[0].stride[0] for m in v1.head.msc] == [8, 4, 2, 1, 1]


# ----------------------------------------------------------------------------------------- FCN heads

def test_fcn_upsamplers_are_bilinear_and_equal_interpolation():
    model = build_model("fcn8s", num_classes=3, width=W)
    ups = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [u.stride[0] for u in ups] == [2, 2, 8]
    for up in ups:
        f = up.stride[0]
        assert up.kernel_size[0] == 2 * f
        w = up.weight.detach()
        assert torch.allclose(w[torch.arange(w.shape[0]), torch.arange(w.shape[0]) % w.shape[1]],
                              bilinear_kernel(f).expand(w.shape[0], -1, -1))
        coarse = torch.randn(1, 3, 6, 5)
        with torch.no_grad():
            fine = up(coarse)
        ref = F.interpolate(coarse, scale_factor=f, mode="bilinear", align_corners=False)
        assert fine.shape == ref.shape
        assert torch.allclose(fine[..., f:-f, f:-f], ref[..., f:-f, f:-f], atol=1e-5)  # equal away from the border


def test_fcn_final_upsamplers_are_fixed_and_run_in_fp32_under_autocast():
    """FCN Sec. 4.3: the final upsampling is fixed bilinear, the 2x ones learn; under bf16 autocast the upsampler
    gives the fp32 result (torch's bf16 kernel for it is 7x slower on a CPU)."""
    model = build_model("fcn8s", num_classes=3, width=W)
    head = model.head
    assert not head.upscore8.weight.requires_grad
    assert head.upscore2.weight.requires_grad and head.upscore_pool4.weight.requires_grad
    assert not build_model("fcn32s", num_classes=3, width=W).head.upscore.weight.requires_grad
    assert not build_model("fcn16s", num_classes=3, width=W).head.upscore16.weight.requires_grad
    coarse = torch.randn(1, 3, 5, 4)
    with torch.no_grad():
        ref = head.upscore8(coarse)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = head.upscore8(coarse.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, head.upscore8(coarse.bfloat16().float()))
    assert (out - ref).abs().max() < 0.05  # only the bf16 rounding of the input


def test_a_fixed_bilinear_upsampler_is_its_transposed_convolution_as_two_matrix_products():
    """The fixed tent kernel is an outer product, so A @ x @ B^T gives the transposed convolution's sums: the same
    output and the same gradient (float rounding apart). A learned or altered kernel keeps the convolution."""
    for f in (2, 3, 8, 32):
        up = bilinear_upsampler(4, f, fixed=True)
        x = torch.randn(2, 4, 5, 3, requires_grad=True)
        assert up._is_tent()
        out = up(x)
        ref = F.conv_transpose2d(x, up.weight, stride=f, padding=up.padding, groups=4)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        g = torch.randn_like(out)
        (grad,) = torch.autograd.grad(out, x, g)
        (grad_ref,) = torch.autograd.grad(ref, x, g)
        torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-4)
    learned = bilinear_upsampler(4, 2)
    assert learned.weight.requires_grad  # FCN's 2x upsampling learns: the convolution
    with torch.no_grad():
        up.weight[0, 0, 0, 0] += 1.0  # no longer the tent (e.g. a loaded kernel): the convolution again
    assert not up._is_tent()
    torch.testing.assert_close(up(x), F.conv_transpose2d(x, up.weight, stride=32, padding=16, groups=4))


def test_train_at_stride_keeps_the_scores_at_the_output_stride_in_training_only():
    """DeepLab v1 Sec. 3.1 trains against the ground truth subsampled by 8: with `train_at_stride` the train-mode
    output is the stride-8 score map (each MSC scale at its own size); eval mode is unchanged."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 48)
    for name in ("deeplab-v1-largefov", "deeplab-v2-resnet101-aspp-l"):
        model = build_model(name, num_classes=4, width=W)
        full = _eval_forward(model, x)
        model.train_at_stride = True
        assert torch.equal(_eval_forward(model, x), full)
        with torch.no_grad():
            strided = model.train()(x)
        assert strided.shape == (2, 4, 8, 6)
    model = build_model("deeplab-v2-resnet101-aspp-l-msc", num_classes=4, width=W, freeze_bn=True)
    model.train_at_stride = True
    with torch.no_grad():
        outputs = model.train()(x)
    assert [tuple(o.shape[-2:]) for o in outputs] == [(8, 6), (4, 3), (6, 5), (8, 6)]


def test_dropout_drops_a_fraction_p_and_keeps_the_mean():
    from dlcore.heads import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.5)
    x = torch.ones(200_000)
    y = drop.train()(x)
    assert set(y.unique().tolist()) == {0.0, 2.0}
    assert abs((y == 0).float().mean().item() - 0.5) < 0.01
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_fcn_score_layers_start_at_zero():
    model = build_model("fcn8s", num_classes=3, width=W)
    for name in ("score_fr", "score_pool4", "score_pool3"):
        assert not getattr(model.head, name).weight.any()
    assert not _eval_forward(model, torch.randn(1, 3, 40, 40)).any()
    assert {id(p) for p in model.classifier_parameters()} == {
        id(p) for n, p in model.head.named_parameters() if n.startswith("score_")}


@pytest.mark.parametrize("coarse, fine", [("fcn32s", "fcn16s"), ("fcn16s", "fcn8s")])
def test_staged_training_starts_from_the_coarser_nets_predictions(coarse, fine):
    """FCN Sec. 4.2: the new skip's score layer is zero, so pool4 (pool3) adds nothing at the start: the finer
    net's output is the coarser net's scores, upsampled through 2x then 16x (8x) bilinear layers instead of
    32x (16x): the same up to the interpolation."""
    torch.manual_seed(0)
    small = build_model(coarse, num_classes=3, width=W)
    for p in small.classifier_parameters():
        nn.init.normal_(p)
    big = build_model(fine, num_classes=3, width=W)
    mine = big.state_dict()
    shared = {k: v for k, v in small.state_dict().items() if k in mine and mine[k].shape == v.shape}
    new = {"fcn16s": ["score_pool4.weight", "score_pool4.bias", "upscore2.weight", "upscore16.weight"],
           "fcn8s": ["score_pool3.weight", "score_pool3.bias", "upscore_pool4.weight", "upscore8.weight"]}[fine]
    assert set(mine) - set(shared) == {f"head.{k}" for k in new}
    big.load_state_dict(shared, strict=False)
    x = torch.randn(1, 3, 64, 64)
    out_small, out_big = _eval_forward(small, x), _eval_forward(big, x)
    assert (out_big - out_small).abs().mean() < 0.2 * out_small.abs().mean()
    assert (out_big.argmax(1) == out_small.argmax(1)).float().mean() > 0.9
    # the zero is what keeps the predictions: the skip is on the path (a non-zero skip score moves them)
    skip = big.head.score_pool4 if fine == "fcn16s" else big.head.score_pool3
    skip.register_forward_hook(lambda m, i, o: o * 0 + 123.0)
    assert not torch.allclose(_eval_forward(big, x), out_big)


# ------------------------------------------------------------------------------------- DeepLab v2 heads

@pytest.mark.parametrize("name, rates", [("deeplab-v2-vgg-largefov", (12,)), ("deeplab-v2-vgg-aspp-s", (2, 4, 8, 12)),
                                         ("deeplab-v2-vgg-aspp-l", (6, 12, 18, 24)),
                                         ("deeplab-v2-resnet101-largefov", (12,)),
                                         ("deeplab-v2-resnet101-aspp-l", (6, 12, 18, 24))])
def test_aspp_is_the_sum_of_its_branches(name, rates):
    torch.manual_seed(0)
    model = build_model(name, num_classes=4, width=W).eval()
    head = model.head
    assert tuple(b[0].dilation[0] for b in head.branches) == rates
    assert len(head.branches[0]) == (7 if "vgg" in name else 1)
    features = torch.randn(1, next(head.parameters()).shape[1], 9, 9)
    with torch.no_grad():
        assert torch.allclose(head(features), sum(b(features) for b in head.branches), atol=1e-5)
    expected = [p for b in head.branches for p in b[-1].parameters()]
    assert [id(p) for p in model.classifier_parameters()] == [id(p) for p in expected]


def test_msc_fuses_the_scales_by_max():
    torch.manual_seed(0)
    # freeze_bn: ResNet without dropout and with fixed BN behaves the same in train and eval mode
    model = build_model("deeplab-v2-resnet101-aspp-l-msc", num_classes=4, width=W, freeze_bn=True)
    assert isinstance(model, MSC) and model.scales == (0.5, 0.75, 1.0)
    x = torch.randn(2, 3, 41, 37)
    with torch.no_grad():
        fused_eval = model.eval()(x)
        fused, *per_scale = model.train()(x)
        maps = [model.scores(F.interpolate(x, size=(round(41 * s), round(37 * s)), mode="bilinear",
                                           align_corners=False) if s != 1 else x) for s in (0.5, 0.75, 1.0)]
    ref = maps[-1].shape[-2:]
    by_hand = torch.stack([F.interpolate(m, size=ref, mode="bilinear", align_corners=False) for m in maps]).amax(0)
    by_hand = F.interpolate(by_hand, size=(41, 37), mode="bilinear", align_corners=False)
    assert torch.allclose(fused_eval, by_hand, atol=1e-5) and torch.allclose(fused, by_hand, atol=1e-5)
    for m, out in zip(maps, per_scale):
        assert torch.allclose(out, F.interpolate(m, size=(41, 37), mode="bilinear", align_corners=False), atol=1e-5)
    assert (fused >= per_scale[-1] - 1e-5).all()  # the max is at least the scale-1 scores everywhere
    assert not torch.allclose(fused, per_scale[-1])  # and the other scales win somewhere
    # MSC is the same network: a single-scale state dict loads as is
    model.load_state_dict(build_model("deeplab-v2-resnet101-aspp-l", num_classes=4, width=W).state_dict())


def test_freeze_bn_keeps_batch_norm_fixed_in_training():
    x = torch.randn(2, 3, 33, 33)
    frozen = build_model("deeplab-v2-resnet101-largefov", num_classes=3, width=W, freeze_bn=True).train()
    bns = [m for m in frozen.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [bn.running_mean.clone() for bn in bns]
    frozen(x).sum().backward()
    assert frozen.training and not any(bn.training for bn in bns)
    assert all(torch.equal(b, bn.running_mean) for b, bn in zip(before, bns))
    assert all(not p.requires_grad and p.grad is None for bn in bns for p in bn.parameters())
    live = build_model("deeplab-v2-resnet101-largefov", num_classes=3, width=W).train()
    bn = next(m for m in live.modules() if isinstance(m, nn.BatchNorm2d))
    mean = bn.running_mean.clone()
    live(x)
    assert not torch.equal(mean, bn.running_mean)


# ---------------------------------------------------------------------------------- torchvision weights

def test_subsample_fc_decimates_like_deeplab_and_convolutionalizes_like_fcn():
    from dlcore.heads import convolutionalize

    torch.manual_seed(0)
    fc = nn.Linear(2 * 7 * 7, 8)
    w = fc.weight.view(8, 2, 7, 7)
    small = nn.Conv2d(2, 2, 3)  # 7x7 -> 3x3 (taps 0, 3, 6), 8 -> 2 filters (every 4th)
    ws, bs = subsample_fc(fc.weight, fc.bias, small, in_kernel=7)
    assert torch.equal(ws, w[::4][:, :, [0, 3, 6]][:, :, :, [0, 3, 6]]) and torch.equal(bs, fc.bias[::4])
    w4, _ = subsample_fc(fc.weight, fc.bias, nn.Conv2d(2, 8, 4), in_kernel=7)
    assert torch.equal(w4, w[:, :, [0, 2, 4, 6]][:, :, :, [0, 2, 4, 6]])
    # at full size: FCN's exact convolutionalization (the same as dlcore.heads.convolutionalize)
    wf, bf = subsample_fc(fc.weight, fc.bias, nn.Conv2d(2, 8, 7), in_kernel=7)
    conv = convolutionalize(fc, 2, 7)
    assert torch.equal(wf, conv.weight) and torch.equal(bf, conv.bias)
    patch = torch.randn(1, 2, 7, 7)
    assert torch.allclose(F.conv2d(patch, wf, bf).flatten(1), fc(patch.flatten(1)), atol=1e-5)
    # fc7 (1x1): 8 x 8 -> 2 x 2, rows and columns every 4th
    fc7 = nn.Linear(8, 8)
    w7, _ = subsample_fc(fc7.weight, fc7.bias, nn.Conv2d(2, 2, 1), in_kernel=1)
    assert torch.equal(w7[:, :, 0, 0], fc7.weight[::4, ::4])
    with pytest.raises(ValueError, match="cannot subsample"):
        subsample_fc(fc.weight, fc.bias, nn.Conv2d(3, 8, 3), in_kernel=7)


def _torchvision_state(factory):
    """A torchvision state dict with random values, made without torchvision's slow init of 100M weights."""
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in factory(weights=None).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    return {k: (torch.randn(s, generator=g) if d.is_floating_point else torch.zeros(s, dtype=d))
            for k, (s, d) in shapes.items()}


def test_vgg_weights_round_trip_with_fc6_fc7_subsampling(tmp_path):
    state = _torchvision_state(torchvision.models.vgg16)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    model = build_model("deeplab-v1-largefov", num_classes=21, weights=path)
    assert "weights" not in model.options
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, state[k]), k
    fc6 = state["classifier.0.weight"].view(4096, 512, 7, 7)
    assert torch.equal(model.head.fc6.weight, fc6[::4][:, :, ::3, ::3])  # 1,024 of 4,096 filters; 7x7 -> 3x3
    assert torch.equal(model.head.fc6.bias, state["classifier.0.bias"][::4])
    assert torch.equal(model.head.fc7.weight[:, :, 0, 0], state["classifier.3.weight"][::4, ::4])
    del model
    # an ASPP head: every branch starts from the same subsampled fc6/fc7
    aspp = load_torchvision_weights(build_model("deeplab-v2-vgg-aspp-s", num_classes=21), state)
    for branch in aspp.head.branches:
        assert torch.equal(branch[0].weight, fc6[::4][:, :, ::3, ::3])
    del aspp
    bad = dict(state, **{"features.0.weight": torch.zeros(64, 3, 5, 5)})
    with pytest.raises(ValueError, match=r"features\.0\.weight.*\(64, 3, 5, 5\).*\(64, 3, 3, 3\)"):
        load_torchvision_weights(VGG16(), bad)


def test_resnet_weights_round_trip(tmp_path):
    state = _torchvision_state(torchvision.models.resnet101)
    path = tmp_path / "resnet101.pth"
    torch.save(state, path)
    model = build_model("deeplab-v2-resnet101-aspp-l", num_classes=21, output_stride=16, weights=str(path))
    own = model.backbone.state_dict()
    assert set(own) == {k for k in state if not k.startswith("fc.")}
    for k, v in own.items():
        assert torch.equal(v, state[k]), k
    with pytest.raises(ValueError, match="lacks"):
        load_torchvision_weights(ResNet101(), _torchvision_state(torchvision.models.vgg16))


def test_weights_need_width_1_and_an_existing_file(tmp_path):
    with pytest.raises(ValueError, match="width=1.0"):
        build_model("deeplab-v1-largefov", width=0.5, weights=tmp_path / "x.pth")
    with pytest.raises(ValueError, match="width=1.0"):
        load_torchvision_weights(build_model("fcn32s", width=W), {})
    with pytest.raises(FileNotFoundError, match="no weights file"):
        build_model("deeplab-v2-resnet101-largefov", weights=tmp_path / "missing.pth")
    from torchvision.models import ResNet101_Weights, VGG16_Weights

    assert imagenet_weights(VGG16(W)) is VGG16_Weights.IMAGENET1K_V1
    assert imagenet_weights(ResNet101(W)) is ResNet101_Weights.IMAGENET1K_V1


# ------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("name, kwargs, message", [
    ("fcn4s", {}, r"unknown model 'fcn4s'; choose one of \['fcn32s'"),
    ("deeplab-v2-resnet101-aspp-l", {"output_stride": 4}, "output_stride must be 8 or 16"),
    ("deeplab-v1-largefov", {"output_stride": 8}, r"\['output_stride'\] do not apply.*accepts \['batch_norm', 'weights'\]"),
    ("deeplab-v2-vgg-aspp-l", {"freeze_bn": True}, "ResNet-101 models only"),
    ("deeplab-v2-vgg-aspp-l", {"scales": (1.0,)}, "do not apply"),
    ("deeplab-v2-vgg-aspp-l-msc", {"scales": (0.5, -1)}, "positive"),
    ("fcn8s", {"width": 0}, "width must be a number > 0"),
    ("fcn8s", {"width": -1.0}, "width must be a number > 0"),
    ("fcn8s", {"num_classes": 0}, "num_classes must be"),
    ("deeplab-v2-resnet101-aspp-l", {"freeze_bn": "yes"}, "freeze_bn must be True or False"),
    ("fcn8s", {"batch_norm": "yes"}, "batch_norm must be True or False"),
    ("deeplab-v2-resnet101-aspp-l", {"batch_norm": True}, "VGG-16 models only"),
])
def test_bad_names_and_options_are_clear_errors(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(name, **kwargs)


def test_batch_norm_trunk_is_torchvision_vgg16_bn():
    """batch_norm=True: torchvision's vgg16_bn definition (a BatchNorm2d after each of the 13 convs), its
    state-dict keys, the same dense surgery, and the architecture option kept for checkpoint rebuilds."""
    import torchvision

    model = build_model("deeplab-v1-largefov", num_classes=3, width=0.0625, batch_norm=True)
    assert model.options == {"batch_norm": True} and model.output_stride == 8
    norms = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 13
    reference = torchvision.models.vgg16_bn(weights=None).features.state_dict()
    assert {f"features.{k}" for k in reference} == set(model.backbone.state_dict())
    out = model.eval()(torch.randn(1, 3, 33, 47))
    assert out.shape == (1, 3, 33, 47)
    assert build_model("fcn8s", num_classes=3, width=0.0625).options == {"batch_norm": False}


def test_caffe_resnet_layout_strides_the_1x1_and_keeps_the_weights():
    """caffe=True: the released DeepLab-v2 ResNet-101's sampling (stride on res3a_branch2a, the 1x1; pool1 in
    ceil mode) with exactly the parameters of the torchvision layout, so the same state dict loads."""
    plain = build_model("deeplab-v2-resnet101-aspp-l", num_classes=3, width=0.0625)
    caffe = build_model("deeplab-v2-resnet101-aspp-l", num_classes=3, width=0.0625, caffe=True)
    assert caffe.options["caffe"] is True and "caffe" not in plain.options
    block = caffe.backbone.layer2[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1) and block.downsample[0].stride == (2, 2)
    assert plain.backbone.layer2[0].conv2.stride == (2, 2)
    assert caffe.backbone.maxpool.ceil_mode and not plain.backbone.maxpool.ceil_mode
    caffe.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        assert caffe.eval()(x).shape == (1, 3, 65, 65)
        assert caffe.scores(x).shape[-1] == 9 and plain.eval().scores(x).shape[-1] == 9  # both output stride 8
    with pytest.raises(ValueError, match="caffe must be True or False"):
        build_model("deeplab-v2-resnet101-largefov", num_classes=3, width=0.0625, caffe="yes")


# ---------------------------------------------------------------------------------- convolutionalization (FCN Sec. 3.1)

def test_convolutionalized_classifier_equals_sliding_window():
    torch.manual_seed(0)
    c, k = 3, 5
    fc = nn.Linear(c * k * k, 4)
    conv = __import__('dlcore.heads').heads.convolutionalize(fc, c, k)
    x = torch.randn(1, c, 9, 11)
    dense = conv(x)  # [1, 4, 5, 7]: the classifier at every window, in one pass
    for i in range(x.shape[2] - k + 1):
        for j in range(x.shape[3] - k + 1):
            window = x[:, :, i:i + k, j:j + k].flatten(1)
            torch.testing.assert_close(dense[:, :, i, j], fc(window))


def test_convolutionalize_rejects_wrong_window():
    with pytest.raises(ValueError, match="cannot read"):
        __import__('dlcore.heads').heads.convolutionalize(nn.Linear(10, 2), 3, 2)


def test_build_model_loads_imagenet_weights_from_a_saved_torchvision_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(0)
    with torch.device("meta"):
        reference = torchvision.models.resnet101(weights=None)
    state = {k: torch.randn(v.shape) if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype)
             for k, v in reference.state_dict().items()}
    path = tmp_path / "resnet101.pth"
    torch.save(state, path)
    model = build_model("deeplab-v2-resnet101-aspp-l", weights=path)
    for key in ("conv1.weight", "bn1.running_var", "layer3.22.conv2.weight", "layer4.2.bn3.bias"):
        assert torch.equal(model.backbone.state_dict()[key], state[key]), key

    state["layer1.0.conv1.weight"] = torch.zeros(1, 2, 3, 3)
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight.*\(1, 2, 3, 3\)"):
        load_torchvision_weights(model, state)
    with pytest.raises(ValueError, match="width"):
        load_torchvision_weights(build_model("deeplab-v1-largefov", width=W), state)
