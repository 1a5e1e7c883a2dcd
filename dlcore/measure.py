"""What the papers measure besides accuracy: speed, memory and compute, and the GPU figures on record.

DeepLab v1 Table 2 reports training speed per field-of-view variant, DeepLab v2 Sec. 3.1 the memory and time
denser score maps cost, and Sec. 1 frames per second on a GPU. `images_per_second` times any callable (a
`dlcore.inference.Predictor`), `activation_megabytes` sums the feature maps a forward pass makes,
`conv_gmacs` its multiply-adds, `inference_bytes` / `training_bytes` bound the memory a pass needs (from
shapes alone, so that commands refuse an impossible size up front: `check_memory`), and
`recorded_gpu_results` reads the GPU measurements of benchmarks/RESULTS.md, for notebooks that run on a
machine without a GPU.
"""

import re
import time
from pathlib import Path

import torch
from torch import nn

from dlcore.atrous import count_macs

__all__ = ["images_per_second", "activation_megabytes", "conv_gmacs", "recorded_gpu_results", "inference_bytes",
           "training_bytes", "check_memory"]


def images_per_second(fn, images: torch.Tensor, iters: int = 10, warmup: int = 2) -> float:
    """Warm up (cuDNN autotuning, graph capture), then time `iters` calls of `fn(images)` -> images/s.

    CUDA runs asynchronously, so the clock stops only after a synchronize.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"images_per_second needs iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    for _ in range(warmup):
        fn(images)
    _synchronize(images.device)
    start = time.perf_counter()
    for _ in range(iters):
        fn(images)
    _synchronize(images.device)
    return images.shape[0] * iters / (time.perf_counter() - start)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def activation_megabytes(model: nn.Module, x: torch.Tensor) -> float:
    """Megabytes of all feature maps the leaf modules of `model` produce on `x`: a device-independent measure of
    the memory cost of a smaller output stride (DeepLab v2 Sec. 3.1: denser maps cost memory and time).
    """
    return sum(_feature_map_bytes(model, x)) / 2**20


def _feature_map_bytes(model: nn.Module, x: torch.Tensor) -> list[int]:
    """The bytes of each feature map the leaf modules of `model` produce on `x` (eval mode)."""
    sizes = []

    def count(module, inputs, output):
        outputs = output if isinstance(output, (list, tuple)) else [output]
        sizes.append(sum(o.numel() * o.element_size() for o in outputs if torch.is_tensor(o)))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.inference_mode():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return sizes


def _on_meta(model: nn.Module, batch: int, height: int, width: int) -> tuple[list[int], int]:
    """(feature map bytes, weight bytes) of `model` on a [batch,3,height,width] input, run on the meta device:
    shapes only, nothing allocated, so an impossible size is measured in milliseconds."""
    import copy

    # a copy whose tensors are meta tensors of the same shapes: the weights themselves are not copied
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad) for p in model.parameters()}
    memo.update({id(b): torch.empty_like(b, device="meta") for b in model.buffers()})
    meta = copy.deepcopy(model, memo)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return _feature_map_bytes(meta, torch.empty(batch, 3, height, width, device="meta")), weights


def inference_bytes(model: nn.Module, batch: int, height: int, width: int) -> int:
    """Upper bound on one inference pass at [batch,3,height,width]: the weights, three times the largest feature
    map (a layer's input, its output and a temporary; inference frees the others as it goes) and the class
    scores at the input size, their softmax and their running mean over scales (3 x [B,L,H,W] floats)."""
    maps, weights = _on_meta(model, batch, height, width)
    scores = 3 * batch * getattr(model, "num_classes", 21) * height * width * 4
    return weights + 3 * max(maps, default=0) + scores


def training_bytes(model: nn.Module, batch: int, height: int, width: int) -> int:
    """Estimate of one SGD step at [batch,3,height,width]: the weights four times (weights, gradients, momentum,
    a temporary) and every feature map once (kept for the backward pass, which frees them as it goes)."""
    maps, weights = _on_meta(model, batch, height, width)
    return 4 * weights + sum(maps)


def check_memory(need: int, device, what: str, fix: str) -> None:
    """ValueError naming `what` and the estimate when `need` bytes exceed what `device` has free, before the work
    starts (the allocator's own error, minutes later, names no flag)."""
    from dlcore.crf import lattice  # the one reading of the free memory (CUDA's, or the host's MemAvailable)

    device = torch.device(device)
    free = lattice.available_memory_bytes(device)
    if need > free:
        raise ValueError(f"{what} may need {need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB available "
                         f"on {device}; {fix}")


def conv_gmacs(model: nn.Module, x: torch.Tensor) -> float:
    """Multiply-adds (in G) of every nn.Conv2d of one forward pass of `model` (eval mode) on `x`: a machine-
    independent measure of the cost that DeepLab v1 Table 2's training speeds report (a training step is ~3x a
    forward). `dlcore.atrous.count_macs`, which counts a dilated tap once (the holes are skipped)."""
    return count_macs(model.eval(), x) / 1e9


GPU_WORDS = re.compile(r"\b(H100|H200|A100|V100|L4|L40S?|RTX|GPU|CUDA)\b", re.IGNORECASE)


def recorded_gpu_results(results_md: str | Path) -> list[dict]:
    """The sections of benchmarks/RESULTS.md measured on a GPU: [{title, date, machine, command, table}].

    A section is a `## ` heading with `date:`, `machine:` and `command:` lines (the RESULTS.md convention);
    it counts as a GPU measurement when its machine line names a GPU. Empty list: no GPU figure is recorded.
    """
    path = Path(results_md)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; pass the path of benchmarks/RESULTS.md (notebooks: ../benchmarks/RESULTS.md)")
    found = []
    for block in re.split(r"^## ", path.read_text(), flags=re.MULTILINE)[1:]:
        title, _, body = block.partition("\n")
        fields = {k: _field(body, k) for k in ("date", "machine", "command")}
        machine = fields["machine"] or ""
        if GPU_WORDS.search(machine) and not re.search(r"\bno GPU\b", machine, re.IGNORECASE):
            table = _tables(body)
            found.append({"title": title.strip(), **fields, "table": table})
    return found


def _tables(body: str) -> str:
    """The markdown tables of a section, one blank line between two tables."""
    blocks, current = [], []
    for line in body.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    return "\n\n".join(blocks)


def _field(body: str, key: str) -> str | None:
    """The value of a `- key: value` (or `key: value`, bold or not) line of a RESULTS.md section."""
    match = re.search(rf"^[-*\s]*\**{key}\**\s*:\**\s*(.+)$", body, flags=re.IGNORECASE | re.MULTILINE)
    if not match:
        return None
    value = match.group(1).strip()
    quoted = re.match(r"`([^`]+)`", value)  # a command in backticks, perhaps followed by a remark
    return quoted.group(1) if quoted else value
