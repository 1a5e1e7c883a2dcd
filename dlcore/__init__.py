"""dlcore: FCN, DeepLab v1 and DeepLab v2, built to be read beside the papers."""

import os
import random

import numpy as np
import torch

__version__ = "0.1.0"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that the same seed gives the same data and, on CPU, the same metrics."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when a GPU is present, else CPU; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU; use device='cpu' or 'auto'")
    return dev
