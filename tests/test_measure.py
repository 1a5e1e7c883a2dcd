"""dlcore.measure: images/s, activation memory and the GPU figures on record; the benchmark table's ratios."""

import pytest
import torch
from torch import nn

from dlcore.measure import activation_megabytes, conv_gmacs, images_per_second, recorded_gpu_results


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


def test_conv_gmacs_counts_a_dilated_tap_once():
    """A 3x3 conv costs 9 x C_in MACs per output whatever its rate (DeepLab v2 Sec. 3.1: the holes are skipped)."""
    x = torch.zeros(1, 3, 20, 20)
    for rate in (1, 4):
        conv = nn.Conv2d(3, 5, 3, padding=rate, dilation=rate)
        assert conv_gmacs(conv, x) == pytest.approx(20 * 20 * 5 * 3 * 9 / 1e9)


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
