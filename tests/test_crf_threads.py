"""The CRF's thread policy (dlcore/crf/threads.py): no more threads than free cores, one for small images."""

import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dlcore.crf import dense_crf, threads


def test_small_images_use_one_thread(monkeypatch):
    monkeypatch.delenv("DLCORE_CRF_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    assert threads.crf_threads(threads.MIN_POINTS_PER_THREAD - 1) == 1
    assert threads.crf_threads(3 * threads.MIN_POINTS_PER_THREAD) == 3
    assert threads.crf_threads(100 * threads.MIN_POINTS_PER_THREAD) == 8


def test_busy_cores_take_threads_away(monkeypatch):
    monkeypatch.delenv("DLCORE_CRF_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    for busy, expected in ((0.0, 2), (1.0, 1), (5.0, 1)):
        monkeypatch.setattr(threads, "busy_cores", lambda busy=busy: busy)
        assert threads.crf_threads(10**6) == expected


def test_a_fixed_setting_wins_and_a_bad_one_is_refused(monkeypatch):
    monkeypatch.setattr(threads, "busy_cores", lambda: 99.0)
    monkeypatch.setenv("DLCORE_CRF_THREADS", "3")
    assert threads.crf_threads(10) == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("DLCORE_CRF_THREADS", bad)
        with pytest.raises(ValueError, match="DLCORE_CRF_THREADS must be 'auto' or a whole number"):
            threads.crf_threads(10**6)


def test_the_call_restores_the_thread_count(monkeypatch):
    monkeypatch.setenv("DLCORE_CRF_THREADS", "1")
    before = torch.get_num_threads()
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), (20, 20)).transpose(2, 0, 1).astype(np.float32)
    dense_crf(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8), probs)
    assert torch.get_num_threads() == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_busy_process_is_seen():
    """A process spinning on the CPU shows in busy_cores (it is on the run queue in every sample)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert threads.busy_cores() >= 1.0
    finally:
        spinner.kill()
        spinner.wait()
