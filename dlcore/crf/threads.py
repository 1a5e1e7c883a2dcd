"""How many CPU threads one CRF call uses: chosen per call from the problem size and the cores others hold.

Mean-field on a CPU is a few dozen short OpenMP regions per iteration (sparse products, softmax). Each
region ends in a barrier, so when another process holds one of the cores, the thread that shares it holds
up every region and two threads run slower than one (measured on 2 cores with one busy process: 2.95x
pydensecrf2's time on 2 threads against 1.43x on 1). So `crf_threads` uses no more threads than there are
cores nobody else is running on, and one thread for images too small for a second one to pay.

    DLCORE_CRF_THREADS=auto   (default) at most torch.get_num_threads(), fewer when cores are busy
    DLCORE_CRF_THREADS=4      exactly that many, whatever the load (benchmarks use this)
"""

from __future__ import annotations

import contextlib
import os
import time

import torch

# Below this many pixels per thread, starting and joining a region costs more than the second thread saves.
MIN_POINTS_PER_THREAD = 20_000
# Samples of the run queue, this far apart: a process that is running in all of them holds a core.
SAMPLES, SAMPLE_GAP_S = 3, 0.001


def _own_running_threads() -> int:
    """Threads of this process that are running or runnable now (this one included)."""
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                count += f.read().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            continue  # the thread ended while we looked
    return count


def _running_elsewhere() -> int:
    """Threads of other processes on the run queue now: /proc/stat's procs_running less our own."""
    with open("/proc/stat") as f:
        running = next(int(line.split()[1]) for line in f if line.startswith("procs_running"))
    return max(0, running - _own_running_threads())


def busy_cores() -> float:
    """Cores that other processes hold: the least run-queue count over a few samples (a busy process is
    in all of them, a short burst is not); the 1-minute load average where /proc is absent (macOS)."""
    try:
        counts = []
        for i in range(SAMPLES):
            if i:
                time.sleep(SAMPLE_GAP_S)
            counts.append(_running_elsewhere())
        return float(min(counts))
    except (OSError, StopIteration, ValueError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def crf_threads(num_points: int) -> int:
    """Threads for a CRF over `num_points` pixels: see the module docstring."""
    setting = os.environ.get("DLCORE_CRF_THREADS", "auto").strip().lower()
    if setting != "auto":
        if not setting.isdigit() or int(setting) < 1:
            raise ValueError(f"DLCORE_CRF_THREADS must be 'auto' or a whole number >= 1, got {setting!r}")
        return int(setting)
    wanted = min(torch.get_num_threads(), max(1, num_points // MIN_POINTS_PER_THREAD))
    if wanted == 1:
        return 1
    free = available_cores() - busy_cores()
    return max(1, min(wanted, int(free)))


@contextlib.contextmanager
def cpu_threads(num_points: int, device: torch.device):
    """Run the block with `crf_threads(num_points)` torch threads on a CPU (restored after); on a GPU, as it is."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    threads = crf_threads(num_points)
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads != before:
            torch.set_num_threads(before)
