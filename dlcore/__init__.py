"""dlcore: FCN, DeepLab v1 and DeepLab v2, built to be read beside the papers."""

import os
import random

import numpy as np
import torch

__version__ = "0.1.0"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that the same seed gives the same data and, on CPU, the same metrics."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in 0..2**32 - 1, not {seed!r} (SEED in a notebook's first cell)")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def check_parameters(namespace: dict) -> None:
    """A notebook's parameters (its first cell's UPPER_CASE names, as papermill or an edit left them): every number
    must be > 0 (SEED >= 0, checked by `seed_everything`), so a bad value is named here, not by torch deep inside
    a cell ("SMOKE_DENSE_SIZE = -5"). Booleans, strings and other values pass."""
    for name, value in namespace.items():
        if not name.isupper() or name == "SEED":
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and not v > 0:
                raise ValueError(f"notebook parameter {name} = {value!r}: it must be a positive number; set it in "
                                 "the first cell (or papermill -p) to a value > 0, as the notebook ships it")


THREADS_ENV = "DLCORE_THREADS"


def use_threads(n: int) -> int:
    """torch.set_num_threads(n), capped by the environment's DLCORE_THREADS when it is set: `dlcore figures`
    runs two notebooks side by side on two cores with one thread each (two threads each would fight over the
    cores at every OpenMP barrier). Returns the number of threads set."""
    cap = os.environ.get(THREADS_ENV, "").strip()
    if cap and (not cap.isdigit() or int(cap) < 1):
        raise ValueError(f"{THREADS_ENV} must be a whole number >= 1, got {cap!r}; unset it to use {n} threads")
    threads = min(n, int(cap)) if cap else n
    torch.set_num_threads(threads)
    return threads


def resolve_device(device="auto") -> torch.device:
    """The one device resolver: 'auto' -> CUDA when a GPU is present, else CPU; 'cpu', 'cuda', 'cuda:N' or a
    torch.device -> that device. An unknown name, or CUDA without a GPU, is a ValueError naming the choices."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):  # torch's own message lists ~20 backends; name the ones dlcore runs on
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N (--device)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU; use device='cpu' or 'auto'")
    return dev
