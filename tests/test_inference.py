"""dlcore.inference: on CPU the end-to-end path (Predictor) equals the plain model + upsampling + DenseCRF +
argmax, the CUDA-only speed options are off by default and refused by name, and evaluate / predict_probs /
forward_probs (multi-scale, flip, CRF) score as the metrics do."""

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlcore import inference
from dlcore.inference import Predictor, as_batch, crf_stage as build_crf, forward_probs, predict, predict_probs
from tinynet import TinyScenes, fresh_model

torch.set_num_threads(2)

# predict normalizes with dlcore.data.transforms.normalize, written by the data engineer in parallel.
needs_normalize = pytest.mark.skipif(importlib.util.find_spec("dlcore.data.transforms") is None,
                                     reason="dlcore.data.transforms (normalize) is not in the tree yet")


class StridedNet(nn.Module):
    """A tiny net whose scores come out at output stride 4, as a DCNN's do before upsampling."""

    output_stride = 4

    def __init__(self, num_classes=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, num_classes, 3, stride=2, padding=1))

    def forward(self, x):
        return self.features(x)


class InputSizeNet(StridedNet):
    """The dlcore convention: logits already at the input size."""

    def forward(self, x):
        return F.interpolate(self.features(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 3, 24, 32), dtype=torch.uint8, generator=g)


def reference_probs(model, images):
    from dlcore.data.transforms import normalize

    with torch.no_grad():
        logits = model.eval()(normalize(images, mode="imagenet"))
    logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return logits.softmax(1)


@needs_normalize
def test_network_only_equals_model_upsample_argmax(images):
    torch.manual_seed(0)
    model = StridedNet()
    labels = predict(model, images, crf=False, device="cpu")
    assert labels.shape == (2, 24, 32) and labels.dtype == torch.int64
    assert torch.equal(labels, reference_probs(model, images).argmax(1))


@needs_normalize
def test_input_size_logits_are_not_resampled(images):
    torch.manual_seed(0)
    model = InputSizeNet()
    probs = Predictor(model, device="cpu", crf=False).probs(images)
    assert torch.allclose(probs, reference_probs(model, images), atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(2, 24, 32), atol=1e-5)


@needs_normalize
@pytest.mark.parametrize("params", [True, {"iterations": 3, "w1": 6.0, "sigma_alpha": 20.0, "sigma_beta": 5.0}])
def test_with_crf_equals_model_then_dense_crf(images, params):
    from dlcore.crf import DenseCRF

    torch.manual_seed(0)
    model = StridedNet()
    crf = DenseCRF() if params is True else DenseCRF(**params)
    expected = crf(images, reference_probs(model, images)).argmax(1)
    assert torch.equal(predict(model, images, crf=params, device="cpu"), expected)


@needs_normalize
def test_crf_changes_the_labels_somewhere(images):
    """Guards the test above against a CRF that is silently skipped: strong smoothing must move labels."""
    torch.manual_seed(0)
    model = StridedNet()
    plain = predict(model, images, crf=False, device="cpu")
    refined = predict(model, images, crf={"iterations": 10, "w1": 10.0, "w2": 10.0}, device="cpu")
    assert (plain != refined).any()


@needs_normalize
def test_list_and_single_image_inputs(images):
    torch.manual_seed(0)
    p = Predictor(StridedNet(), device="cpu", crf=False)
    batch = p(images)
    assert torch.equal(p(list(images)), batch)
    assert torch.equal(p(images[1]), batch[1:])


def test_cuda_options_are_off_on_cpu_and_refused_by_name():
    p = Predictor(StridedNet(), device="cpu", crf=False)
    assert not p.bf16 and not p.channels_last and not p.cuda_graphs
    for option in ("bf16", "channels_last", "compile", "cuda_graphs"):
        with pytest.raises(ValueError, match=f"{option}=True needs a CUDA device"):
            Predictor(StridedNet(), device="cpu", crf=False, **{option: True})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_device_without_gpu_is_a_clear_error(images):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        predict(StridedNet(), images, device="cuda")


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(1, 3, 8, 8), "uint8"),
    (torch.zeros(1, 8, 8, 3, dtype=torch.uint8), r"\[B,3,H,W\]"),
    ([torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(3, 9, 8, dtype=torch.uint8)], "one size"),
    ([], "empty"),
])
def test_bad_images_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        as_batch(bad)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="normalize must be one of"):
        Predictor(StridedNet(), device="cpu", normalize="bgr")
    with pytest.raises(ValueError, match="crf must be"):
        build_crf("yes")
    with pytest.raises(ValueError, match="bf16 must be"):
        Predictor(StridedNet(), device="cpu", bf16="on")


@needs_normalize
def test_msc_list_output_is_a_clear_error(images):
    class ListNet(StridedNet):
        def forward(self, x):
            return [super().forward(x)]

    with pytest.raises(ValueError, match="list of score maps"):
        predict(ListNet(), images, crf=False, device="cpu")


@needs_normalize
def test_a_dlcore_model_end_to_end(images):
    """The real thing at a CPU width: a DeepLab-v2 net through predict equals the model + CRF path."""
    models = pytest.importorskip("dlcore.models")
    from dlcore.crf import DenseCRF

    torch.manual_seed(0)
    model = models.build_model("deeplab-v2-resnet101-aspp-l", num_classes=4, width=0.125)
    params = {"iterations": 2}
    expected = DenseCRF(**params)(images, reference_probs(model, images)).argmax(1)
    assert torch.equal(predict(model, images, crf=params, device="cpu"), expected)


# --------------------------------------------------------------------------------------------- evaluation

class Oracle(nn.Module):
    """Logits = the colour channels (normalisation undone): their argmax is exactly TinyScenes' label."""

    def forward(self, x):
        from dlcore.data.transforms import IMAGENET_MEAN, IMAGENET_STD

        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
        return 50 * (x * std + mean)


def test_evaluate_perfect_model_and_void_ignored():
    scores = inference.evaluate(Oracle(), TinyScenes(n=3), 3)
    assert scores["miou"] == pytest.approx(1.0) and scores["pixel_acc"] == pytest.approx(1.0)
    assert scores["confusion"].sum() == 3 * 15 * 16  # the void row is not counted


def test_evaluate_equals_metrics_on_predictions():
    from dlcore.metrics import scores as metric_scores

    model = fresh_model()
    data = TinyScenes(n=4, seed=1)
    preds = torch.stack([predict_probs(model, data[i][0]).argmax(0) for i in range(4)])
    targets = torch.stack([data[i][1] for i in range(4)])
    expected = metric_scores(preds, targets, 3)
    for batch_size in (1, 3):
        got = inference.evaluate(model, data, 3, batch_size=batch_size)
        for key in ("pixel_acc", "mean_acc", "miou", "fwiou"):
            assert got[key] == pytest.approx(expected[key]), key


def test_predict_probs_is_a_distribution_at_full_size():
    image = TinyScenes(size=12)[0][0]
    probs = predict_probs(fresh_model(), image)
    assert probs.dtype == torch.float32 and probs.device.type == "cpu" and probs.shape == (3, 12, 12)
    torch.testing.assert_close(probs.sum(0), torch.ones(12, 12))
    with pytest.raises(ValueError, match="uint8 image"):
        predict_probs(fresh_model(), image.float())


def test_multiscale_and_flip_average_probabilities():
    from dlcore.data.transforms import normalize

    model = fresh_model().eval()
    images = torch.stack([TinyScenes(size=12)[i][0] for i in range(2)])
    x = normalize(images)

    def probs_at(s, flipped):
        xs = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False) if s != 1 else x
        y = model(xs.flip(-1) if flipped else xs)
        y = y.flip(-1) if flipped else y
        return F.interpolate(y, size=(12, 12), mode="bilinear", align_corners=False).softmax(1)

    with torch.no_grad():
        expected = sum(probs_at(s, f) for s in (0.5, 1.0) for f in (False, True)) / 4
        got = forward_probs(model, images, scales=(0.5, 1), flip=True)
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(forward_probs(model, images), model(x).softmax(1))
    with pytest.raises(ValueError, match="scales"):
        inference.evaluate(model, TinyScenes(n=1), 3, scales=())


def test_crf_true_equals_dense_crf_on_each_image():
    from dlcore.crf import dense_crf
    from dlcore.metrics import scores as metric_scores

    model = fresh_model()
    data = TinyScenes(n=2, size=12)
    preds, targets = [], []
    for i in range(2):
        image, mask = data[i]
        q = dense_crf(image.permute(1, 2, 0).numpy(), predict_probs(model, image).numpy())
        preds.append(q.argmax(0))
        targets.append(mask.numpy())
    expected = metric_scores(np.stack(preds), np.stack(targets), 3)
    got = inference.evaluate(model, data, 3, crf=True)
    assert got["miou"] == pytest.approx(expected["miou"])
    got_dict = inference.evaluate(model, data, 3, crf={"iterations": 0})  # dense_crf parameters; 0 = no change
    assert got_dict["miou"] == pytest.approx(inference.evaluate(model, data, 3)["miou"])


def test_crf_callable_gets_numpy_image_and_probs():
    seen = []

    def always_red(image, probs):
        seen.append((image.dtype, image.shape, probs.shape))
        out = np.zeros_like(probs)
        out[0] = 1
        return out

    data = TinyScenes(n=2, size=12)
    scores = inference.evaluate(fresh_model(), data, 3, crf=always_red)
    assert seen == [(np.uint8, (12, 12, 3), (3, 12, 12))] * 2
    red = sum(int((data[i][1] == 0).sum()) for i in range(2))
    assert scores["pixel_acc"] == pytest.approx(red / (2 * 11 * 12))
    with pytest.raises(ValueError, match="crf"):
        inference.evaluate(fresh_model(), data, 3, crf="yes")


def test_evaluate_takes_a_predictor():
    """evaluate(Predictor) is the fast form of evaluate(model): the same scores; options go on the Predictor."""
    data = TinyScenes(n=3, size=12)
    model = fresh_model()
    expected = inference.evaluate(model, data, 3, crf={"iterations": 2}, scales=(0.5, 1), flip=True)
    predictor = Predictor(model, device="cpu", crf={"iterations": 2}, scales=(0.5, 1), flip=True)
    got = inference.evaluate(predictor, data, 3)
    assert np.array_equal(got["confusion"], expected["confusion"])
    with pytest.raises(ValueError, match="set them on the Predictor"):
        inference.evaluate(predictor, data, 3, flip=True)
