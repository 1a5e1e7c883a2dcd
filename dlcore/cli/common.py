"""What every `python -m dlcore COMMAND` shares: the error convention, the common options, the data options.

The error convention (docs/reliability.md): a problem is one line on stderr, `python -m dlcore COMMAND: problem;
fix`, with exit code 2 for bad usage or input (ValueError, a missing file) and 1 for a failure while running;
`--debug` shows the traceback instead. `guarded(command, body, args)` applies it to a command's body.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from dlcore import resolve_device

# Bad usage or input (exit 2); anything else is a failure while running (exit 1).
BAD_INPUT = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)
DOWNLOAD_HINT = "get it with `python -m dlcore download voc --root DIR`"


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    if "Original Traceback" in text:  # an error re-raised from a DataLoader worker: its own message is last
        text = [line for line in text.splitlines() if line.strip()][-1]
        text = text.split(": ", 1)[-1]
    return " ".join(text.split()) or type(exc).__name__


def command_error(command: str, exc: BaseException, args=None) -> int:
    """Print `python -m dlcore COMMAND: problem; fix` on one line and return the exit code (2 input, 1 run).

    With --debug the exception is re-raised instead, so its traceback shows.
    """
    if getattr(args, "debug", False) or isinstance(exc, BrokenPipeError):  # a closed pipe: `__main__` ends quietly
        raise exc
    code = 2 if isinstance(exc, BAD_INPUT) else 1
    hint = "" if code == 2 else f" ({type(exc).__name__}; rerun with --debug for the traceback)"
    print(f"python -m dlcore {command}: {_one_line(exc)}{hint}", file=sys.stderr)
    return code


def guarded(command: str, body, args) -> int:
    """Run `body(args)` under the error convention; its exit code, or the convention's."""
    try:
        return body(args)
    except Exception as e:
        return command_error(command, e, args)


# --------------------------------------------------------------------------------------------------- options

def add_debug_argument(parser) -> None:
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")


def add_device_argument(parser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N (default auto)")


def add_run_arguments(parser) -> None:
    """--device, --no-progress and --debug: the options of every command that runs a network."""
    add_device_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_argument(parser)


def add_rendering_arguments(parser, out: Path, what: str) -> None:
    """--executed, --out and --debug: the options of the commands that render the executed notebooks (book,
    slides); `out` is the default output folder, `what` what goes there."""
    from dlcore.book import EXECUTED

    parser.add_argument("--executed", type=Path, default=EXECUTED, metavar="DIR",
                        help="the executed notebooks that `make figures` wrote (default build/notebooks)")
    parser.add_argument("--out", type=Path, default=out, metavar="DIR", help=f"where {what} go (default {out})")
    add_debug_argument(parser)


def check_device(args) -> None:
    """The cheap check first: a typo in --device must not cost a data set build or a model."""
    resolve_device(args.device)


# The largest image side any command takes: VOC's images are at most 500 pixels, and DeepLab's training crop
# is 321 or 513; a larger side is almost always a typo, and its memory grows with its square.
MAX_SIDE = 4096


def check_flags(**ranges) -> None:
    """Check numeric flags before any work: flag=(value, low, high), the flag's name written with `_` for `-`
    (`batch_size` for --batch-size); a value of None (a flag left out) passes. A value outside [low, high]
    (a bound None: open) or not finite is a ValueError naming the flag, its range and the value, where the
    allocator or torch would fail much later naming neither."""
    for name, (value, low, high) in ranges.items():
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if not (math.isfinite(v) and (low is None or v >= low) and (high is None or v <= high)):
                bounds = f">= {low:g}" if high is None else f"in {low:g}..{high:g}"
                raise ValueError(f"--{name.replace('_', '-')} must be {bounds}, got {v:g}")


def check_scoring_memory(model, dataset, *, scales=(1.0,), batch_size: int = 1, crf: bool = False, device="cpu",
                         fix: str = "lower --scales, --size or --batch-size") -> None:
    """eval and crf-search: the network (and the CRF's lattice) on the dataset's largest input, a synthetic scene's
    side or VOC's longest (500 pixels), at the largest scale, refused up front when it does not fit."""
    from dlcore import resolve_device
    from dlcore.crf.lattice import lattice_memory_bytes
    from dlcore.measure import check_memory, inference_bytes

    side = math.ceil(max(scales) * max(getattr(dataset, "height", 500), getattr(dataset, "width", 500)))
    crf_bytes = lattice_memory_bytes(batch_size * side * side, 5, dataset.num_classes) if crf else 0
    check_memory(inference_bytes(model, batch_size, side, side) + crf_bytes, resolve_device(device),
                 f"scoring at --scales up to {max(scales):g} (inputs of {side} x {side} pixels, "
                 f"batches of {batch_size}{', with the CRF' if crf else ''})", fix)


def checkpoint_crf(on: bool, meta: dict):
    """--crf: the CRF settings the checkpoint records (an imported release's), else dlcore.crf.DEFAULTS (True)."""
    return (meta.get("crf") or True) if on else None


# ------------------------------------------------------------------------------------------------------ data

def open_voc(root, split: str):
    """VOCSegmentation, with a split list that is not text named (Python's UnicodeDecodeError names no file)."""
    from dlcore.data import VOCSegmentation

    try:
        return VOCSegmentation(root, split=split)
    except UnicodeDecodeError as e:
        raise ValueError(f"the list of VOC split {split!r} under {root} (ImageSets/Segmentation/{split}.txt) is not "
                         f"a text file ({e.reason} at byte {e.start}); restore it from the VOC archive") from None


def open_dataset(data: str, split: str, *, root=None, n: int = 100, size: int = 128, seed: int = 0):
    """The one place a command turns its data options into a dataset: -> (dataset, description).

    data "synthetic": SyntheticScenes(split, n, size, seed); "voc": the VOC folder `root` (--root), `split`.
    """
    if data == "synthetic":
        from dlcore.data import SyntheticScenes

        return SyntheticScenes(split, n=n, size=size, seed=seed), f"synthetic {split}"
    if not root:
        raise ValueError(f"--data voc needs --root DIR (the folder holding VOCdevkit/VOC2012); {DOWNLOAD_HINT}")
    return open_voc(root, split), f"VOC {split}"
