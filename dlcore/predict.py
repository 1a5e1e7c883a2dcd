"""The GPU model: uint8 images in, CRF-refined labels out, without leaving the device.

DeepLab v2 (Chen et al., TPAMI 2017, Sec. 3 and 4.1) runs the DCNN, upsamples its score maps bilinearly to
the image size and refines them with the fully connected CRF; the paper reports 8 frames/s for the network
on a GPU plus 0.5 s per image for the CRF on a CPU. Here every stage is a tensor operation on one device:

    normalize -> network (bf16 autocast, channels-last) -> bilinear upsampling -> softmax -> DenseCRF -> argmax

so a batch never goes back to the host until the labels are wanted. On a CPU the same path runs in plain
fp32 (the CUDA-only speed options are no-ops there, or refused with a clear error when asked for by name),
and gives exactly the result of the model followed by `dlcore.crf.DenseCRF`.
"""

import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import dlcore

NORMALIZE_MODES = ("imagenet", "caffe")


def as_batch(images) -> torch.Tensor:
    """uint8 [B,3,H,W], uint8 [3,H,W] or a list of same-size uint8 [3,H,W] -> uint8 [B,3,H,W]."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("predict got an empty list of images; pass at least one uint8 [3,H,W] image")
        sizes = {tuple(torch.as_tensor(im).shape) for im in images}
        if len(sizes) > 1:
            raise ValueError(f"predict batches images of one size, got sizes {sorted(sizes)}; "
                             "call it once per size or resize the images first")
        images = torch.stack([torch.as_tensor(im) for im in images])
    images = torch.as_tensor(images)
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.dtype != torch.uint8:
        raise ValueError(f"predict takes uint8 images (0..255, it normalizes them itself), got {images.dtype}; "
                         "pass the raw image, e.g. torch.from_numpy(np.asarray(pil)).permute(2, 0, 1)")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"predict takes images uint8 [B,3,H,W] (channels first), got shape {tuple(images.shape)}")
    return images


def build_crf(crf) -> nn.Module | None:
    """crf=True -> DenseCRF with its defaults; a dict -> DenseCRF(**dict); a module is used as is; False/None -> no CRF."""
    if crf is None or crf is False:
        return None
    if isinstance(crf, nn.Module):
        return crf
    if crf is not True and not isinstance(crf, dict):
        raise ValueError(f"crf must be True, False, a dict of DenseCRF parameters (w1=, sigma_alpha=, ...) "
                         f"or a DenseCRF module, got {type(crf).__name__}")
    from dlcore.crf import DenseCRF  # imported here: the network-only path needs no CRF code

    return DenseCRF() if crf is True else DenseCRF(**crf)


class Predictor:
    """A model made ready for inference on one device; `predictor(images)` -> labels [B,H,W] on that device.

    bf16: autocast the network to bfloat16 on CUDA (the softmax and the CRF stay fp32: the CRF's
        message passing sums many small terms). channels_last: NHWC memory layout for the cuDNN convolutions.
        Both default to "auto" = on for CUDA, off for CPU; True on a CPU raises.
    compile: `torch.compile` the network (CUDA only). cuda_graphs: capture the network stage once per input
        shape in a CUDA graph and replay it, which removes the kernel-launch cost that bounds batch 1.
    On CUDA the predictor turns on `torch.backends.cudnn.benchmark` (process-wide): cuDNN times its
    convolution algorithms once per input shape and keeps the fastest (measured on an H100: without it,
    DeepLab-LargeFOV in bf16 at batch 1 ran 30x slower than in fp32; benchmarks/RESULTS.md).
    The model is moved to the device and put in eval mode in place (batch norm uses its running statistics).
    """

    def __init__(self, model: nn.Module, *, device="auto", crf=True, normalize: str = "imagenet",
                 bf16="auto", channels_last="auto", compile: bool = False, cuda_graphs: bool = False):
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES} (the one the model was trained with), got {normalize!r}")
        self.device = dlcore.resolve_device(device) if isinstance(device, str) else torch.device(device)
        cuda = self.device.type == "cuda"
        self.bf16 = _cuda_option("bf16", bf16, cuda)
        self.channels_last = _cuda_option("channels_last", channels_last, cuda)
        _cuda_option("compile", compile, cuda)
        _cuda_option("cuda_graphs", cuda_graphs, cuda)
        self.normalize_mode = normalize
        if cuda:  # a predictor sees few input shapes: let cuDNN time its algorithms once per shape (process-wide)
            torch.backends.cudnn.benchmark = True
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.network = torch.compile(self.model) if compile else self.model
        self.crf = build_crf(crf)
        if self.crf is not None:
            self.crf = self.crf.to(self.device).eval()
        self.cuda_graphs = cuda_graphs
        self._graphs = {}  # (shape) -> _GraphedStage

    @torch.inference_mode()
    def probs(self, images) -> torch.Tensor:
        """Softmax class probabilities [B,L,H,W] (fp32, on the device) at the images' size, CRF-refined if set."""
        images = as_batch(images).to(self.device, non_blocking=True)
        probs = self._network_stage(images)
        return probs if self.crf is None else self.crf(images, probs)

    def __call__(self, images) -> torch.Tensor:
        """Labels int64 [B,H,W] on the device: the argmax of `probs`."""
        return self.probs(images).argmax(1)

    def _network_stage(self, images: torch.Tensor) -> torch.Tensor:
        if not self.cuda_graphs:
            return self._scores(images)
        key = tuple(images.shape)
        if key not in self._graphs:
            self._graphs[key] = _GraphedStage(self._scores, images)
        return self._graphs[key](images)

    def _scores(self, images: torch.Tensor) -> torch.Tensor:
        from dlcore.data.transforms import normalize

        x = normalize(images, mode=self.normalize_mode)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.network(x)
        if isinstance(logits, (list, tuple)):
            raise ValueError("the model returned a list of score maps (an MSC model in train mode?); "
                             "predict needs one [B,L,H,W] tensor: call model.eval() or pass the fused model")
        # The DeepLab nets already return input-size scores; a net that returns its strided map
        # (output_stride > 1) is upsampled here, bilinearly, as the paper does before the CRF.
        if logits.shape[-2:] != images.shape[-2:]:
            logits = F.interpolate(logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return torch.softmax(logits.float(), dim=1)


def _cuda_option(name: str, value, cuda: bool) -> bool:
    """'auto' -> on for CUDA only; True on a CPU -> ValueError naming the option."""
    if value == "auto":
        return cuda
    if value not in (True, False):
        raise ValueError(f"{name} must be True, False or 'auto', got {value!r}")
    if value and not cuda:
        raise ValueError(f"{name}=True needs a CUDA device, but this Predictor runs on CPU; "
                         f"leave {name} at 'auto' (off on CPU) or pass device='cuda' on a GPU machine")
    return value


class _GraphedStage:
    """One CUDA graph of `fn` for one input shape: copy into a static input, replay, read the static output.

    The output buffer is reused by the next replay, so callers get a clone (cheap next to the network).
    """

    def __init__(self, fn, example: torch.Tensor, warmup: int = 3):
        self.static_input = example.clone()
        # Warm up on a side stream (cuDNN autotuning, allocator) before capture, as the CUDA-graphs docs require.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn(self.static_input)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_output = fn(self.static_input)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.static_input.copy_(images)
        self.graph.replay()
        return self.static_output.clone()


def predict(model: nn.Module, images, *, crf=True, device="auto", **options) -> torch.Tensor:
    """Labels int64 [B,H,W] on `device` for uint8 images [B,3,H,W] (or [3,H,W], or a list of same-size ones).

    crf: True (DenseCRF defaults), a dict of DenseCRF parameters (w1, sigma_alpha, sigma_beta, w2,
    sigma_gamma, iterations), a DenseCRF module, or False for the network alone. `options` go to `Predictor`
    (normalize, bf16, channels_last, compile, cuda_graphs). For many batches build one `Predictor` and call it:
    it keeps the prepared (compiled / graphed) model.
    """
    return Predictor(model, device=device, crf=crf, **options)(images)


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


@torch.inference_mode()
def activation_megabytes(model: nn.Module, x: torch.Tensor) -> float:
    """Megabytes of all feature maps the leaf modules of `model` produce on `x`: a device-independent measure of
    the memory cost of a smaller output stride (DeepLab v2 Sec. 3.1: denser maps cost memory and time).
    """
    total = 0

    def count(module, inputs, output):
        nonlocal total
        outputs = output if isinstance(output, (list, tuple)) else [output]
        total += sum(o.numel() * o.element_size() for o in outputs if torch.is_tensor(o))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return total / 2**20


@torch.inference_mode()
def conv_gmacs(model: nn.Module, x: torch.Tensor) -> float:
    """Multiply-adds (in G) of every nn.Conv2d of one forward pass of `model` on `x`: a machine-independent
    measure of the cost that DeepLab v1 Table 2's training speeds report (a training step is ~3x a forward)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        k = module.weight.shape[1] * module.weight[0, 0].numel()  # inputs per output value (groups included)
        total += output.numel() * k

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles = [m.register_forward_hook(count) for m in convs]
    try:
        model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return total / 1e9


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
