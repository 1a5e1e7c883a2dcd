"""dlcore.predict: on CPU the end-to-end path equals the plain model + upsampling + DenseCRF + argmax,
and the CUDA-only speed options are off by default and refused by name."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlcore.predict import (Predictor, activation_megabytes, as_batch, build_crf, images_per_second, predict,
                            recorded_gpu_results)

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


def test_images_per_second_counts_images_and_calls():
    calls = []
    ips = images_per_second(lambda x: calls.append(x.shape[0]), torch.zeros(4, 3, 2, 2), iters=3, warmup=2)
    assert calls == [4] * 5 and ips > 0
    with pytest.raises(ValueError, match="iters >= 1"):
        images_per_second(lambda x: x, torch.zeros(1), iters=0)


def test_activation_megabytes_grows_with_a_denser_map():
    """Output stride 8 keeps 4x the feature-map pixels of 16: the measure sees it (exactly, for this net)."""
    coarse = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU())
    dense = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
    x = torch.zeros(1, 3, 64, 64)
    assert activation_megabytes(coarse, x) == pytest.approx(2 * 8 * 16 * 16 * 4 / 2**20)
    assert activation_megabytes(dense, x) == pytest.approx(4 * activation_megabytes(coarse, x))


SECTIONS = """# Benchmark results

## CRF, GPU
- date: 2026-11-23
- machine: one NVIDIA H100 (lent machine)
- command: `python benchmarks/crf.py --device cuda`

| model | images/s |
|---|---|
| x | 9 |

## models, CPU
- date: 2026-11-22
- machine: 2-core CPU dev box (shared, noisy), no GPU
- command: `python benchmarks/models.py --quick`

| model | images/s |
|---|---|
| y | 1 |
"""


def test_recorded_gpu_results_keeps_gpu_sections_only(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(SECTIONS)
    (gpu,) = recorded_gpu_results(path)
    assert gpu["title"] == "CRF, GPU" and gpu["date"] == "2026-11-23" and "H100" in gpu["machine"]
    assert gpu["command"] == "python benchmarks/crf.py --device cuda"
    assert gpu["table"].splitlines()[-1] == "| x | 9 |"
    path.write_text(SECTIONS.replace("| x | 9 |\n", "| x | 9 |\n\nsecond table:\n\n| a |\n|---|\n"))
    assert recorded_gpu_results(path)[0]["table"].endswith("| x | 9 |\n\n| a |\n|---|")
    path.write_text(SECTIONS)
    path.write_text(SECTIONS.split("## CRF")[0] + "## models" + SECTIONS.split("## models")[1])
    assert recorded_gpu_results(path) == []
    with pytest.raises(FileNotFoundError, match="RESULTS.md"):
        recorded_gpu_results(tmp_path / "missing.md")


def test_benchmark_table_ratios_are_against_the_same_run_reference():
    """benchmarks/models.py divides each row by the references of the same dtype and batch."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "models.py"
    spec = importlib.util.spec_from_file_location("bench_models", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = [{"model": "fcn_resnet101", "dtype": "fp32", "batch": 1, "size": 9, "ips": 2.0},
            {"model": "deeplabv3_resnet101", "dtype": "fp32", "batch": 1, "size": 9, "ips": 4.0},
            {"model": "ours", "dtype": "fp32", "batch": 1, "size": 9, "ips": 8.0}]
    table = bench.markdown(rows, [{"model": "ours", "batch": 1, "size": "5x4", "ips": 3.0}])
    assert "| ours | fp32 | 1 | 9 | 8.00 | 4.00 | 2.00 |" in table
    assert "| ours | 1 | 5x4 | 3.00 |" in table
