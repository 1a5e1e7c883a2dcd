"""dlcore.caffe: Caffe import without Caffe (wire-format reader, mapping, BN folding) and the import-caffe CLI."""

import struct

import numpy as np
import pytest
import torch

from dlcore.models import build_model
from dlcore.caffe import caffemodel_layers, export_caffe, import_caffe, read_caffemodel, write_caffemodel

W = 0.0625  # tiny models: the mapping is shape-generic, so a small-width file tests the full-width logic


def _randomize(model, seed=0):
    """Random weights and BN statistics, so that every written value is distinguishable."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name
                        else torch.randn(t.shape, generator=g))
    return model


def _layers(name, seed=0, **kw):
    return export_caffe(_randomize(build_model(name, width=W), seed), **kw)


# ------------------------------------------------------------------------------------------- wire format

def _varint(n):
    out = b""
    while n >= 0x80:
        out, n = out + bytes([n & 0x7F | 0x80]), n >> 7
    return out + bytes([n])


def _len_field(field, payload):
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def test_reader_decodes_hand_encoded_protobuf(tmp_path):
    """Bytes built from the protobuf spec by hand (not by dlcore's writer): modern and V1 layers, packed and
    unpacked floats, double_data, legacy 4-D shapes, unknown fields skipped."""
    shape = _len_field(7, _len_field(1, _varint(2) + _varint(3)))  # BlobShape dim: packed [2, 3]
    data = _len_field(5, struct.pack("<6f", *range(6)))
    blob_a = shape + data
    blob_b = _len_field(7, _len_field(1, _varint(2))) + b"".join(  # unpacked floats: one tag each (wire type 5)
        _varint(5 << 3 | 5) + struct.pack("<f", v) for v in (7.5, -1.0))
    unknown = _varint(3 << 3 | 0) + _varint(300) + _len_field(10, b"ignored")  # bottom-like and param-like fields
    layer = _len_field(1, b"conv1") + _len_field(2, b"Convolution") + unknown + _len_field(7, blob_a) + _len_field(7, blob_b)
    legacy_blob = b"".join(_varint(f << 3) + _varint(v) for f, v in ((1, 1), (2, 1), (3, 1), (4, 2)))
    legacy_blob += _len_field(8, struct.pack("<2d", 0.25, 4.0))  # double_data
    v1 = _len_field(4, b"fc8") + _varint(5 << 3) + _varint(14) + _len_field(6, legacy_blob)
    net = _len_field(1, b"net") + _len_field(100, layer) + _len_field(2, v1) + _len_field(100, _len_field(1, b"relu"))
    path = tmp_path / "hand.caffemodel"
    path.write_bytes(net)

    layers = caffemodel_layers(path)
    assert [(n, t) for n, t, _ in layers] == [("conv1", "Convolution"), ("fc8", "InnerProduct")]  # relu: no blobs
    a, b = layers[0][2]
    np.testing.assert_array_equal(a, np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(b, [7.5, -1.0])
    (c,) = layers[1][2]
    assert c.shape == (1, 1, 1, 2) and c.dtype == np.float32
    np.testing.assert_array_equal(c.reshape(-1), [0.25, 4.0])


@pytest.mark.parametrize("legacy,double", [(False, False), (True, False), (False, True)])
def test_writer_and_reader_round_trip(tmp_path, legacy, double):
    rng = np.random.default_rng(0)
    layers = {"conv1_1": [rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)], "fc7": [rng.normal(size=(5, 4, 1, 1))]}
    out = read_caffemodel(write_caffemodel(tmp_path / "x.caffemodel", layers, legacy=legacy, double=double))
    assert list(out) == list(layers)
    for name, blobs in layers.items():
        for written, read in zip(blobs, out[name]):
            np.testing.assert_array_equal(read.reshape(written.shape), written.astype(np.float32))


def test_truncated_and_foreign_files_give_clear_errors(tmp_path):
    good = write_caffemodel(tmp_path / "good.caffemodel", _layers("deeplab-v1-largefov"))
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(ValueError, match=r"cut\.caffemodel is not a readable \.caffemodel \(truncated"):
        read_caffemodel(cut)
    text = tmp_path / "deploy.prototxt"
    text.write_text('name: "DeepLab-LargeFOV"\nlayer {\n  name: "conv1_1"\n  type: "Convolution"\n}\n')
    with pytest.raises(ValueError, match="deploy.prototxt"):
        read_caffemodel(text)
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(_len_field(1, b"net"))
    with pytest.raises(ValueError, match="no layers with weights"):
        read_caffemodel(empty)
    with pytest.raises(FileNotFoundError, match="missing.caffemodel"):
        read_caffemodel(tmp_path / "missing.caffemodel")


# --------------------------------------------------------------------------------------------- mapping

@pytest.mark.parametrize("name", ["deeplab-v1-largefov", "deeplab-v2-vgg-aspp-l", "fcn8s",
                                  "deeplab-v2-resnet101-aspp-l-msc"])
def test_import_sets_every_parameter_to_the_written_values(tmp_path, name):
    source = _randomize(build_model(name, width=W), seed=1)
    path = write_caffemodel(tmp_path / "m.caffemodel", export_caffe(source, scale_factor=1.0))
    target = build_model(name, width=W)
    report = import_caffe(target, path)
    assert report["dataset"] == "voc12"
    for (key, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=0, atol=0, msg=key)


def test_import_uses_the_published_layer_names(tmp_path):
    names = [n for n, _, _ in _layers("deeplab-v2-resnet101-aspp-l")]
    for expected in ("conv1", "bn_conv1", "scale_conv1", "res2a_branch1", "bn2a_branch1", "scale2a_branch1",
                     "res2a_branch2a", "res2c_branch2c", "res3b3_branch2b", "res4b22_branch2c", "res5c_branch2c",
                     "fc1_voc12_c0", "fc1_voc12_c3"):
        assert expected in names
    assert "res4b23_branch2a" not in names and "res3b4_branch2a" not in names
    vgg = [n for n, _, _ in _layers("deeplab-v1-largefov")]
    assert vgg == [f"conv{b}_{i}" for b, n in zip(range(1, 6), (2, 2, 3, 3, 3)) for i in range(1, n + 1)] + \
        ["fc6", "fc7", "fc8_voc12"]


def test_caffe_batch_norm_folds_into_batchnorm2d(tmp_path):
    """Caffe BatchNorm (running sums / scale factor) + Scale (gamma, beta) computes what the imported BN does."""
    factor = 7.5
    rng = np.random.default_rng(2)
    layers = _layers("deeplab-v2-resnet101-largefov")
    by_name = {n: blobs for n, _, blobs in layers}
    c = by_name["bn_conv1"][0].shape[0]
    mean_sum, var_sum = rng.normal(size=c) * factor, rng.uniform(0.5, 2, size=c) * factor
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    by_name["bn_conv1"][:] = [mean_sum, var_sum, np.array([factor])]
    by_name["scale_conv1"][:] = [gamma, beta]
    model = build_model("deeplab-v2-resnet101-largefov", width=W)
    import_caffe(model, write_caffemodel(tmp_path / "bn.caffemodel", layers))

    x = rng.normal(size=(1, c, 5, 6)).astype(np.float32)
    caffe = (x - (mean_sum / factor)[:, None, None]) / np.sqrt((var_sum / factor)[:, None, None] + 1e-5)
    caffe = caffe * gamma[:, None, None] + beta[:, None, None]  # Caffe: BatchNorm (eps 1e-5), then Scale
    bn = model.backbone.bn1.eval()
    assert bn.eps == 1e-5
    with torch.no_grad():
        ours = bn(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, caffe, rtol=1e-5, atol=1e-5)


def test_zero_scale_factor_means_no_statistics_and_msc_copies_are_skipped(tmp_path):
    layers = _layers("deeplab-v2-resnet101-aspp-l-msc")
    by_name = {n: b for n, _, b in layers}
    by_name["bn_conv1"][2] = np.zeros(1)
    layers += [(f"{n}_res075", t, b) for n, t, b in layers[:3]] + [("fc1_voc12_c0_res05", "Convolution",
                                                                    by_name["fc1_voc12_c0"])]
    model = build_model("deeplab-v2-resnet101-aspp-l-msc", width=W)
    report = import_caffe(model, write_caffemodel(tmp_path / "msc.caffemodel", layers))
    assert report["skipped"] == ["conv1_res075", "bn_conv1_res075", "scale_conv1_res075", "fc1_voc12_c0_res05"]
    assert torch.count_nonzero(model.backbone.bn1.running_mean) == 0
    assert torch.count_nonzero(model.backbone.bn1.running_var) == 0


def test_wrong_architecture_lists_missing_and_unexpected_layers(tmp_path):
    path = write_caffemodel(tmp_path / "vgg.caffemodel", _layers("deeplab-v1-largefov"))
    model = build_model("deeplab-v2-resnet101-aspp-l", width=W)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"does not fit deeplab-v2-resnet101-aspp-l: \d+ layer\(s\) missing \['conv1', "
                                         r"'bn_conv1'.*unexpected \['conv1_1'"):
        import_caffe(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_shape_mismatch_names_layer_parameter_and_both_shapes(tmp_path):
    path = write_caffemodel(tmp_path / "voc.caffemodel", _layers("deeplab-v1-largefov"))
    model = build_model("deeplab-v1-largefov", num_classes=5, width=W)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"caffe layer 'fc8_voc12' blob 0 has shape \(21, 64, 1, 1\), but dlcore "
                                         r"parameter head\.fc8\.weight has shape \(5, 64, 1, 1\)"):
        import_caffe(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "a failed import changed the model"
    wider = build_model("deeplab-v1-largefov", width=2 * W)
    with pytest.raises(ValueError, match=r"caffe layer 'conv1_1' blob 0 has shape \(4, 3, 3, 3\)"):
        import_caffe(wider, path)


def test_backbone_only_keeps_the_classifier_and_accepts_another_dataset(tmp_path):
    source = _randomize(build_model("deeplab-v1-largefov", num_classes=91, width=W), seed=3)
    path = write_caffemodel(tmp_path / "coco.caffemodel", export_caffe(source, dataset="coco"))
    model = build_model("deeplab-v1-largefov", width=W)
    fc8 = model.head.fc8.weight.clone()
    with pytest.raises(ValueError, match="fc8_coco"):
        import_caffe(model, path)
    import_caffe(model, path, backbone_only=True)
    assert torch.equal(model.head.fc8.weight, fc8)
    assert torch.equal(model.head.fc7.weight, source.head.fc7.weight)
    assert import_caffe(build_model("deeplab-v1-largefov", num_classes=91, width=W), path)["dataset"] == "coco"


def test_fcn_full_deconvolution_imports_its_diagonal(tmp_path):
    """FCN's Caffe upscore layers are full C x C deconvolutions with the bilinear kernel on the diagonal."""
    source = _randomize(build_model("fcn32s", width=W), seed=4)
    layers = export_caffe(source)
    full = {n: b for n, _, b in layers}["upscore"]
    w = full[0]  # [C, 1, k, k] -> [C, C, k, k] diagonal
    c = w.shape[0]
    dense = np.zeros((c, c) + w.shape[2:], np.float32)
    dense[np.arange(c), np.arange(c)] = w[:, 0]
    full[0] = dense
    model = build_model("fcn32s", width=W)
    import_caffe(model, write_caffemodel(tmp_path / "fcn.caffemodel", layers))
    assert torch.equal(model.head.upscore.weight, source.head.upscore.weight)
    dense[0, 1] = 1.0
    with pytest.raises(ValueError, match="mixes classes"):
        import_caffe(model, write_caffemodel(tmp_path / "fcn2.caffemodel", layers))


def test_models_without_a_caffe_counterpart_are_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="MSc"):
        import_caffe(build_model("deeplab-v1-largefov-msc", width=W), {"conv1_1": []})
    with pytest.raises(ValueError, match="no batch norm"):
        import_caffe(build_model("deeplab-v1-largefov", width=W, batch_norm=True), {"conv1_1": []})


# ------------------------------------------------------------------------------------------------- CLI

def test_import_caffe_cli_writes_a_checkpoint_that_loads(tmp_path, capsys):
    from dlcore.cli import main
    from dlcore.checkpoint import load_checkpoint, load_model

    source = _randomize(build_model("deeplab-v1-largefov", width=W), seed=5)
    path = write_caffemodel(tmp_path / "train_iter_6000.caffemodel", export_caffe(source))
    out = tmp_path / "ckpt" / "largefov.pt"
    args = ["import-caffe", str(path), "--model", "deeplab-v1-largefov", "--out", str(out), "--width", str(W)]
    assert main(args) == 0
    state = load_checkpoint(out)
    assert state["meta"]["normalize"] == "caffe" and state["meta"]["name"] == "deeplab-v1-largefov"
    model = load_model(state, name="deeplab-v1-largefov")
    for a, b in zip(source.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)

    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(path.read_bytes()[:5000])
    bad_out = tmp_path / "bad.pt"
    assert main(["import-caffe", str(cut), "--model", "deeplab-v1-largefov", "--out", str(bad_out),
                 "--width", str(W)]) == 2
    assert "cut.caffemodel" in capsys.readouterr().err
    assert not bad_out.exists() and not list(tmp_path.glob(".bad.pt*"))
    assert main(["import-caffe", str(path), "--model", "deeplab-v2-resnet101-aspp-l", "--out", str(bad_out),
                 "--width", str(W)]) == 2
    assert "missing" in capsys.readouterr().err and not bad_out.exists()
