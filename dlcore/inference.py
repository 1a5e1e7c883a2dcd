"""The one test-time path: uint8 images in, class probabilities (and labels) out, CRF-refined if asked.

DeepLab (v1 Sec. 3-4, v2 Sec. 3 and 4.1) runs the DCNN, upsamples its score maps bilinearly to the image
size and refines them with the fully connected CRF; test-time multi-scale inputs and flipping are options the
papers add. Every stage here is a tensor operation on one device:

    normalize -> network -> bilinear upsampling -> softmax -> mean over scales / flip -> CRF -> argmax

`forward_probs` is the network stage, `crf_stage` the CRF stage, and `Predictor` the two made ready on one
device, with the GPU speed options (bf16 autocast, channels-last, torch.compile, CUDA graphs). Everything
else calls it: `predict` (labels for one batch), `predict_probs` (probabilities of one image), `evaluate`
(the VOC protocol: one confusion matrix over a dataset at full resolution; it takes a model or a Predictor),
`evaluate_voc`, `dlcore.segment` and `dlcore.crf.search`. On a CPU the speed options are no-ops (or refused
by name), so the path is plain fp32.

Multi-scale inputs and flipping AVERAGE the softmax probabilities. Why the mean of probabilities rather than
DeepLab v2's max of logits: v2's max fusion is part of the MSC network and is learned jointly with it (the
`-msc` models already fuse that way inside); a net trained at one scale is best combined as the mixture of
its per-scale predictors, where one over-confident scale cannot overrule the others, and the mean stays a
calibrated distribution for the CRF's unary -log P.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dlcore import resolve_device
from dlcore.data.transforms import normalize as normalize_images
from dlcore.metrics import confusion_matrix, scores_from_confusion

__all__ = ["forward_probs", "crf_stage", "Predictor", "predict", "predict_probs", "evaluate", "evaluate_voc",
           "as_batch", "check_scales"]

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


def check_scales(scales) -> tuple[float, ...]:
    scales = tuple(float(s) for s in scales)
    if not scales or not all(s > 0 for s in scales):
        raise ValueError(f"scales must be one or more positive factors (e.g. 0.5 0.75 1), got {scales}")
    return scales


# ------------------------------------------------------------------------------------------ the network stage

def forward_probs(model: nn.Module, images: torch.Tensor, *, normalize: str = "imagenet", scales=(1.0,),
                  flip: bool = False, bf16="auto", channels_last: bool = False) -> torch.Tensor:
    """Softmax probabilities float32 [B,L,H,W] at the input size for uint8 images [B,3,H,W] (model's device).

    Each scale s runs the net on the normalised images resized bilinearly to s x (H, W) (as the Caffe Interp
    layer of DeepLab v2's MSC), its logits are upsampled back to (H, W), and the softmax probabilities of all
    scales (and of the flipped images, flipped back) are averaged (the module docstring says why).
    bf16: autocast the network to bfloat16 ("auto": on CUDA); the upsampling and softmax stay fp32.
    """
    h, w = images.shape[-2:]
    x = normalize_images(images, mode=normalize)
    bf16 = x.device.type == "cuda" if bf16 == "auto" else bf16
    total, count = None, 0
    for s in check_scales(scales):
        xs = x if s == 1.0 else F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))),
                                              mode="bilinear", align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            probs = _probs_at(model, xs, (h, w), flipped, bf16, channels_last)
            total = probs if total is None else total + probs
            count += 1
    return total if count == 1 else total / count  # one scale: no extra kernel on the fast path


def _probs_at(model, x, size, flipped: bool, bf16: bool, channels_last: bool) -> torch.Tensor:
    """Softmax at `size` of the network on `x` (mirrored, and its scores mirrored back, when `flipped`)."""
    x = x.flip(-1) if flipped else x
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
    if isinstance(logits, (list, tuple)):
        raise ValueError("the model returned a list of score maps (an MSC model in train mode?); "
                         "predict needs one [B,L,H,W] tensor: call model.eval() or pass the fused model")
    # The DeepLab nets already return input-size scores; a net that returns its strided map
    # (output_stride > 1) is upsampled here, bilinearly, as the paper does before the CRF.
    logits = logits.float()
    logits = logits.flip(-1) if flipped else logits
    if logits.shape[-2:] != tuple(size):
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits.softmax(1)


# ------------------------------------------------------------------------------------------ the CRF stage

def crf_stage(crf, device=None):
    """crf option -> None, or a function (images uint8 [B,3,H,W], probs [B,L,H,W]) -> refined probs [B,L,H,W].

    None/False: off. True: `dlcore.crf.DenseCRF` with its defaults (`dlcore.crf.DEFAULTS`). A dict: DenseCRF
    parameters (iterations, w1, sigma_alpha, sigma_beta, w2, sigma_gamma, ...). A module (DenseCRF, LearnableCRF):
    used as is, moved to `device`. Any other callable: called per image as crf(image uint8 numpy [H,W,3],
    probs numpy [L,H,W]) -> probs [L,H,W].
    """
    if crf is None or crf is False:
        return None
    if isinstance(crf, nn.Module):
        return crf.to(device).eval() if device is not None else crf.eval()
    if crf is True or isinstance(crf, dict):
        from dlcore.crf import DenseCRF  # imported here: the network-only path needs no CRF code

        module = DenseCRF() if crf is True else DenseCRF(**crf)
        return module.to(device) if device is not None else module
    if callable(crf):
        return _per_image(crf)
    raise ValueError(f"crf must be True, False, a dict of DenseCRF parameters (w1=, sigma_alpha=, ...), a DenseCRF "
                     f"module or a callable (image, probs) -> probs, got {type(crf).__name__}")


def _per_image(crf):
    def refine(images, probs):
        out = []
        for image, p in zip(images, probs):
            q = crf(image.permute(1, 2, 0).cpu().numpy(), p.cpu().numpy())
            q = torch.as_tensor(np.asarray(q), dtype=torch.float32)
            if q.shape != p.shape:
                raise ValueError(f"the crf callable returned shape {tuple(q.shape)}; it must return probs "
                                 f"[L,H,W] = {tuple(p.shape)}")
            out.append(q.to(p.device))
        return torch.stack(out)

    return refine


# ------------------------------------------------------------------------------------------ the Predictor

class Predictor:
    """A model made ready for inference on one device; `predictor(images)` -> labels [B,H,W] on that device.

    normalize: the input normalization the weights expect ("caffe" for imported Caffe models). scales, flip:
        test-time multi-scale inputs and flipping (`forward_probs`). crf: see `crf_stage`.
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

    def __init__(self, model: nn.Module, *, device="auto", crf=True, normalize: str = "imagenet", scales=(1.0,),
                 flip: bool = False, bf16="auto", channels_last="auto", compile: bool = False,
                 cuda_graphs: bool = False):
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES} (the one the model was trained with), got {normalize!r}")
        self.device = resolve_device(device)
        cuda = self.device.type == "cuda"
        self.bf16 = _cuda_option("bf16", bf16, cuda)
        self.channels_last = _cuda_option("channels_last", channels_last, cuda)
        _cuda_option("compile", compile, cuda)
        _cuda_option("cuda_graphs", cuda_graphs, cuda)
        self.normalize_mode, self.scales, self.flip = normalize, check_scales(scales), bool(flip)
        if cuda:  # a predictor sees few input shapes: let cuDNN time its algorithms once per shape (process-wide)
            torch.backends.cudnn.benchmark = True
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.network = torch.compile(self.model) if compile else self.model
        self.crf = crf_stage(crf, self.device)
        self.cuda_graphs = cuda_graphs
        self._graphs = {}  # (shape) -> _GraphedStage

    @torch.inference_mode()
    def probs(self, images) -> torch.Tensor:
        """Softmax class probabilities [B,L,H,W] (fp32, on the device) at the images' size, CRF-refined if set."""
        images = as_batch(images).to(self.device, non_blocking=True)
        probs = self._network_stage(images)
        if not torch.isfinite(probs).all():  # else argmax gives class 0 everywhere, and the CRF blames its input
            raise ValueError(non_finite_scores(self.model, normalize_images(images, mode=self.normalize_mode)))
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
        return forward_probs(self.network, images, normalize=self.normalize_mode, scales=self.scales, flip=self.flip,
                             bf16=self.bf16, channels_last=self.channels_last)


def non_finite_scores(model: nn.Module, x: torch.Tensor) -> str:
    """Why the network's scores are NaN or Inf: the first layer whose output is, and its largest weight. Finite
    weights can still overflow float32 (a weight of 3e38 times an activation of 2), so the load-time check of
    the weights cannot catch every damaged or diverged checkpoint; the network's output is checked instead."""
    found = []

    def watch(name):
        def hook(module, inputs, output):
            if not found and torch.is_tensor(output) and output.is_floating_point() \
                    and not torch.isfinite(output).all():
                found.append(name)
        return hook

    handles = [m.register_forward_hook(watch(n)) for n, m in model.named_modules() if not list(m.children())]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    where = "its scores"
    if found:
        weights = [p.detach().abs().max() for p in model.get_submodule(found[0]).parameters()]
        largest = f", its largest weight {float(max(weights)):.3g}" if weights else ""
        where = f"layer {found[0]} ({type(model.get_submodule(found[0])).__name__}{largest})"
    return (f"the network's output is NaN or Inf, first at {where}: its weights overflow float32 (damaged, "
            "diverged, or a wrong import); use an intact checkpoint or retrain")


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


# ------------------------------------------------------------------------------------------ its uses

def predict(model: nn.Module, images, *, crf=True, device="auto", **options) -> torch.Tensor:
    """Labels int64 [B,H,W] on `device` for uint8 images [B,3,H,W] (or [3,H,W], or a list of same-size ones).

    crf: True (DenseCRF defaults), a dict of DenseCRF parameters (w1, sigma_alpha, sigma_beta, w2,
    sigma_gamma, iterations), a DenseCRF module, or False for the network alone. `options` go to `Predictor`
    (normalize, scales, flip, bf16, channels_last, compile, cuda_graphs). For many batches build one `Predictor`
    and call it: it keeps the prepared (compiled / graphed) model.
    """
    return Predictor(model, device=device, crf=crf, **options)(images)


def predict_probs(model: nn.Module, image, *, device="cpu", normalize: str = "imagenet", scales=(1.0,),
                  flip: bool = False) -> torch.Tensor:
    """Softmax probabilities float32 CPU [L,H,W] for one uint8 image [3,H,W] (model moved to `device`, eval mode).

    `np.asarray(predict_probs(model, image)).argmax(0)` is the label map. Multi-scale/flip as `forward_probs`.
    """
    image = torch.as_tensor(image)
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"predict_probs takes one uint8 image [3,H,W], got {image.dtype} {tuple(image.shape)}; "
                         "for [H,W,3] arrays pass torch.from_numpy(a).permute(2, 0, 1)")
    predictor = Predictor(model, device=device, crf=False, normalize=normalize, scales=scales, flip=flip,
                          channels_last=False)
    return predictor.probs(image)[0].cpu()


def _batches(dataset, batch_size: int):
    """Consecutive items in batches of one image size (VOC images differ in size; evaluation is at full size)."""
    images, masks = [], []
    for i in range(len(dataset)):
        image, mask = dataset[i]
        image, mask = torch.as_tensor(image), torch.as_tensor(mask)
        if images and (len(images) == batch_size or image.shape != images[0].shape):
            yield torch.stack(images), torch.stack(masks)
            images, masks = [], []
        images.append(image)
        masks.append(mask.long())
    if images:
        yield torch.stack(images), torch.stack(masks)


def evaluate(model, dataset, num_classes: int, *, device="cpu", normalize: str = "imagenet", scales=(1.0,),
             flip: bool = False, crf=None, batch_size: int = 1, progress: bool = False) -> dict:
    """Score a model on `dataset` with the VOC protocol: one confusion matrix over all pixels at full resolution.

    model: an nn.Module (run as `Predictor(model, device=, crf=, normalize=, scales=, flip=,
    channels_last=False)`) or a ready `Predictor`, whose own settings are then used (device, normalize,
    scales, flip and crf must be left at their defaults). Returns dlcore.metrics' scores (pixel_acc,
    mean_acc, miou, fwiou, iou [C]) plus "confusion" (int64 [C,C], rows = ground truth).
    """
    from tqdm.auto import tqdm

    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    predictor = _as_predictor(model, device=device, normalize=normalize, scales=scales, flip=flip, crf=crf)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    with tqdm(total=len(dataset), disable=not progress, desc="eval") as bar:
        for images, masks in _batches(dataset, int(batch_size)):
            probs = predictor.probs(images)
            if probs.shape[1] != num_classes:
                raise ValueError(f"the model predicts {probs.shape[1]} classes but num_classes is {num_classes}")
            cm += np.asarray(confusion_matrix(probs.argmax(1).cpu(), masks, num_classes))
            bar.update(len(images))
    out = dict(scores_from_confusion(cm))
    out["confusion"] = cm
    return out


def _as_predictor(model, **options) -> Predictor:
    if not isinstance(model, Predictor):
        options["scales"] = check_scales(options["scales"])
        return Predictor(model, channels_last=False, **options)
    defaults = dict(device="cpu", normalize="imagenet", scales=(1.0,), flip=False, crf=None)
    changed = sorted(k for k, v in options.items() if v != defaults[k] and not (k == "scales" and tuple(v) == (1.0,)))
    if changed:
        raise ValueError(f"evaluate got a Predictor and also {changed}; set them on the Predictor instead")
    return model


def evaluate_voc(model, root, split: str = "val", *, device="cpu", normalize: str = "imagenet",
                 scales=(1.0,), flip: bool = False, crf=None, progress: bool = True, dataset=None) -> dict:
    """The papers' protocol: full-resolution VOC 2012 `split`, 255 ignored, through `evaluate`.

    `dataset` replaces the VOC folder (a fixture or SyntheticScenes). Returns `dlcore.metrics.scores`.
    """
    if dataset is None:
        from dlcore.data import VOCSegmentation

        dataset = VOCSegmentation(root, split=split)
    return evaluate(model, dataset, dataset.num_classes, device=device, normalize=normalize, scales=tuple(scales),
                    flip=flip, crf=crf, batch_size=1, progress=progress)
