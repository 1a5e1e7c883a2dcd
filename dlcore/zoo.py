"""The teaching zoo: every network the notebooks compare, trained once by one command and shipped with dlcore.

    python -m dlcore zoo train [--only NAME ...] [--device cuda]     (re)build what is missing or altered
    python -m dlcore zoo list                                        what is shipped, with its checksum state

Why: a notebook has a few CPU minutes, too few to train the papers' comparisons to the point where they
show (benchmarks/RESULTS.md). The papers separate the two as well: they start from an ImageNet-trained net
and then compare heads, strides and skips. So the zoo does it once:

1. `dlcore.pretrain` trains VGG-16 and ResNet-101 classifiers (width `WIDTH`) on image-level labels: the
   head-neutral stand-in for ImageNet.
2. Every model starts from them as the papers start from ImageNet: FCN convolutionalizes fc6/fc7 (Sec. 3.1),
   DeepLab v1/v2 subsample them (v1 Sec. 4.1) into each fc6/fc7 and every ASPP branch; ResNet heads start fresh.
3. The trunk's lower part stays frozen (the budget of a 2-core CPU; named in every notebook): VGG-16 up to
   pool4, ResNet-101 up to layer3. Its features are computed once per image set (and per scale, for MSC) and
   cached; the last block (conv5 / layer4) and the head train, with the papers' recipe: SGD, momentum 0.9,
   weight decay 5e-4, poly lr, 10x lr on the class-score layers. FCN keeps fc6 as convolutionalized (conv5,
   fc7 and the score layers learn) and trains in stages, 32s -> 16s -> 8s (Sec. 4.2). Each model for `SEEDS`
   (the seed picks the fresh layers' init, the sample order and dropout).
4. The CRF's w1, sigma_alpha, sigma_beta are cross-validated per model on held-out scenes (seed 0's model),
   as the papers do (v1 Sec. 4.2), with w2 = 3, sigma_gamma = 3 fixed.

Files: `zoo/NAME.pt` (fp16 weights of what was trained, torch.save of tensors: loaded with weights_only=True)
and `zoo/manifest.json` (per file: recipe, command, seed, seconds, machine, sha256, CRF settings). `load`
checks the sha256 before reading a file and names the rebuild command when a file is missing or altered.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dlcore.io import atomic_write

ROOT = Path(__file__).resolve().parent.parent
ZOO_DIR = ROOT / "zoo"
CACHE_DIR = ROOT / "build" / "cache" / "zoo"
FORMAT = "dlcore-zoo"
FEATURES_VERSION = 2  # bump when what `trunk_features` caches changes (the cache on disk is keyed by it)

WIDTH = 0.125  # every channel count x 1/8 (conv5: 64 channels; LargeFOV's fc6: 128; the 7x7 fc6: 512)
SIZE = 256  # stride-8 score maps of 32 x 32, stride-32 (FCN-32s) maps of 8 x 8
N_TRAIN = 1000
N_VAL = 96  # the notebooks' test scenes: SyntheticScenes("val", seed=0)[0:N_VAL]
N_HELDOUT = 8  # the CRF's cross-validation scenes: val[N_VAL:N_VAL + N_HELDOUT], never scored
SEEDS = (0, 1, 2)
STEPS, BATCH, LR = 250, 8, 0.03
# The VGG-16 DeepLab heads were trained on a shorter schedule when the first zoo's CPU time ran short: 150 steps,
# CRF cross-validated on 4 held-out scenes and recorded on 16. Kept as their recipe so that `zoo train` rebuilds
# (and completes) the zoo consistently; each entry's manifest record says which it had.
SHORT = {"STEPS": 150, "N_HELDOUT": 4, "N_CRF": 16}
CRF_GRID = {"w1": (3.0, 5.0), "sigma_alpha": (20.0, 40.0, 80.0), "sigma_beta": (4.0,)}
CRF_ITERATIONS = 10

# A tiny schedule exercises every code path in seconds (the tests, `zoo train --schedule tiny`); it never
# writes the shipped zoo (it needs --zoo-dir).
TINY = dict(SIZE=64, N_TRAIN=8, N_VAL=4, N_HELDOUT=2, N_CRF=2, STEPS=2, BATCH=2, SEEDS=(0, 1),
            CRF_GRID={"w1": (4.0,), "sigma_alpha": (10.0, 20.0), "sigma_beta": (5.0,)}, PRETRAIN_STEPS=2)

PRETRAIN = {  # arch -> dlcore.pretrain.pretrain's arguments (the recipe of the stand-in for ImageNet)
    "vgg16": dict(width=WIDTH, steps=1200, batch_size=16, lr=0.02, n_images=8192, seed=0),
    "resnet101": dict(width=WIDTH, steps=1200, batch_size=16, lr=0.02, n_images=8192, seed=0),
}


@dataclass(frozen=True)
class Spec:
    """One zoo model: the dlcore.models name, its build options, and what it starts from."""

    model: str
    options: dict = field(default_factory=dict)
    init_from: str | None = None  # the zoo model (same seed) whose weights start this one: FCN's stages
    short: bool = False  # trained on the SHORT schedule
    steps: int | None = None  # a schedule study's own step count (else STEPS, or SHORT's)

    @property
    def trunk(self) -> str:
        return "resnet101" if "resnet101" in self.model else "vgg16"


MODELS = {
    "fcn32s": Spec("fcn32s", {"batch_norm": True}),
    "fcn16s": Spec("fcn16s", {"batch_norm": True}, init_from="fcn32s"),
    "fcn8s": Spec("fcn8s", {"batch_norm": True}, init_from="fcn16s"),
    "deeplab-v1-7x7": Spec("deeplab-v1-7x7", {"batch_norm": True}, short=True),
    "deeplab-v1-4x4": Spec("deeplab-v1-4x4", {"batch_norm": True}, short=True),
    "deeplab-v1-4x4-r8": Spec("deeplab-v1-4x4-r8", {"batch_norm": True}, short=True),
    "deeplab-v1-largefov": Spec("deeplab-v1-largefov", {"batch_norm": True}, short=True),
    "deeplab-v1-largefov-msc": Spec("deeplab-v1-largefov-msc", {"batch_norm": True}, short=True),
    # The schedule study (notebook 03): the two v1 heads whose ordering did not reproduce, trained 4x as long
    # (600 steps, 4.8 epochs; the paper's 6,000 iterations of 20 are ~11 epochs of its 10,582 images).
    "deeplab-v1-4x4-long": Spec("deeplab-v1-4x4", {"batch_norm": True}, short=True, steps=600),
    "deeplab-v1-largefov-long": Spec("deeplab-v1-largefov", {"batch_norm": True}, short=True, steps=600),
    "deeplab-v2-vgg-aspp-s": Spec("deeplab-v2-vgg-aspp-s", {"batch_norm": True}, short=True),
    "deeplab-v2-vgg-aspp-l": Spec("deeplab-v2-vgg-aspp-l", {"batch_norm": True}, short=True),
    "deeplab-v2-resnet101-largefov": Spec("deeplab-v2-resnet101-largefov", {"output_stride": 8}),
    "deeplab-v2-resnet101-largefov-msc": Spec("deeplab-v2-resnet101-largefov-msc", {"output_stride": 8}),
    "deeplab-v2-resnet101-aspp-l": Spec("deeplab-v2-resnet101-aspp-l", {"output_stride": 8}),
    "deeplab-v2-resnet101-aspp-l-os16": Spec("deeplab-v2-resnet101-aspp-l", {"output_stride": 16}),
}


class ZooError(ValueError):
    """A zoo file that is missing, damaged or not what the manifest says; the message names the rebuild command."""


def rebuild_command(name: str) -> str:
    return f"python -m dlcore zoo train --only {name}"


def entry_names() -> list[str]:
    """Every file of the zoo, in training order: the two pre-trained classifiers, then each model x seed."""
    return [f"pretrain-{a}" for a in PRETRAIN] + [f"{m}-s{s}" for m in MODELS for s in SEEDS]


def _split(entry: str) -> tuple[str, int]:
    model, _, seed = entry.rpartition("-s")
    return model, int(seed)


# ------------------------------------------------------------------------------------------------ files

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(zoo_dir: Path = ZOO_DIR) -> dict:
    path = Path(zoo_dir) / "manifest.json"
    if not path.is_file():
        return {"format": FORMAT, "version": 1, "entries": {}, "crf": {}}
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZooError(f"{path} is not valid JSON ({e}); restore it from git (`git checkout {path.name}`) or "
                       f"rebuild the zoo with `python -m dlcore zoo train`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ZooError(f"{path} is not a dlcore zoo manifest; restore it from git or rebuild with "
                       f"`python -m dlcore zoo train`")
    return manifest


def _write_manifest(manifest: dict, zoo_dir: Path) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    atomic_write(Path(zoo_dir) / "manifest.json", lambda f: f.write(text.encode()))


INT8_MIN_NUMEL = 1 << 14  # tensors this large (conv kernels, not biases or batch norm) may be stored as int8 (40 MB)


def pack(state: dict, int8: bool = False) -> dict:
    """Tensors as stored: fp16, or (int8=True, large float tensors) int8 with one fp32 scale per output channel
    (`KEY#q`, `KEY#scale`). `train_model` keeps int8 only where it moves val mean IoU by at most 0.1 point."""
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if int8 and v.is_floating_point() and v.numel() >= INT8_MIN_NUMEL:
            scale = v.flatten(1).abs().amax(1).clamp_min(1e-12) / 127
            shape = (-1,) + (1,) * (v.ndim - 1)
            out[f"{k}#q"] = (v / scale.view(shape)).round().clamp(-127, 127).to(torch.int8).contiguous()
            out[f"{k}#scale"] = scale.float()
        else:
            out[k] = (v.half() if v.is_floating_point() else v).contiguous()
    return out


def unpack(stored: dict) -> dict:
    """`pack`'s inverse: fp32 tensors (int64 buffers stay as they are)."""
    state = {}
    for k, v in stored.items():
        if k.endswith("#scale"):
            continue
        if k.endswith("#q"):
            base = k.removesuffix("#q")
            scale = stored[f"{base}#scale"]
            state[base] = v.float() * scale.view((-1,) + (1,) * (v.ndim - 1))
        else:
            state[k] = v.float() if v.is_floating_point() else v
    return state


def _save_entry(name: str, stored: dict, info: dict, zoo_dir: Path) -> None:
    """`pack`ed tensors to zoo/NAME.pt (atomically), then its manifest record (atomically): file first, so a
    manifest never names a file that is not complete."""
    zoo_dir = Path(zoo_dir)
    path = zoo_dir / f"{name}.pt"
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "name": name, "state": stored}, f))
    record = {**info, "file": path.name, "sha256": _sha256(path), "bytes": path.stat().st_size}
    _update_manifest(zoo_dir, lambda manifest: manifest["entries"].__setitem__(name, record))


def _update_manifest(zoo_dir: Path, change) -> None:
    """Read, change and write the manifest under an exclusive lock, so that two `zoo train` processes (say one
    for the VGG-16 models, one for ResNet-101's) never lose each other's records."""
    import fcntl

    Path(zoo_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(zoo_dir) / ".manifest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = read_manifest(zoo_dir)
        change(manifest)
        _write_manifest(manifest, zoo_dir)


def _machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def load_entry(name: str, zoo_dir: Path = ZOO_DIR) -> dict:
    """The fp32 state dict of zoo file `name`, after checking it against the manifest (sha256, name)."""
    zoo_dir = Path(zoo_dir)
    path = zoo_dir / f"{name}.pt"
    stamp = path.stat() if path.is_file() else None
    manifest = (zoo_dir / "manifest.json").read_bytes() if (zoo_dir / "manifest.json").is_file() else b""
    key = (str(path.resolve()), stamp and (stamp.st_mtime_ns, stamp.st_size), hashlib.sha256(manifest).hexdigest())
    return {k: v.clone() for k, v in _load_entry_checked(name, zoo_dir, key).items()}


@functools.lru_cache(maxsize=64)
def _load_entry_checked(name: str, zoo_dir: Path, key: tuple) -> dict:
    """`load_entry`'s work, remembered while the file and the manifest stay as they were (`key`)."""
    info = read_manifest(zoo_dir)["entries"].get(name)
    path = zoo_dir / f"{name}.pt"
    fix = f"rebuild it with `{rebuild_command(name)}`"
    if info is None:
        raise ZooError(f"the zoo manifest ({zoo_dir / 'manifest.json'}) has no entry {name!r}; {fix}")
    if not path.is_file():
        raise ZooError(f"zoo file {path} is missing; {fix} (or restore it: `git checkout {path.name}`)")
    if _sha256(path) != info["sha256"]:
        raise ZooError(f"zoo file {path} does not match its sha256 in the manifest (altered or truncated); {fix}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several kinds for a damaged file
        raise ZooError(f"zoo file {path} cannot be read ({type(e).__name__}); {fix}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or blob.get("name") != name:
        raise ZooError(f"zoo file {path} holds {blob.get('name') if isinstance(blob, dict) else 'something else'!r}, "
                       f"not {name!r}; {fix}")
    return unpack(blob["state"])


# ------------------------------------------------------------------------------- networks from the zoo

def build(name: str) -> nn.Module:
    """Zoo model `name` (a key of MODELS), untrained, at the zoo's width, 11 SyntheticScenes classes."""
    from dlcore.data import SyntheticScenes
    from dlcore.models import build_model

    if name not in MODELS:
        raise ValueError(f"unknown zoo model {name!r}; known: {', '.join(MODELS)}")
    spec = MODELS[name]
    model = build_model(spec.model, num_classes=SyntheticScenes.num_classes, width=WIDTH, **spec.options)
    model.zoo_name = name
    return model


def start_from_pretrained(model: nn.Module, pretrained: dict) -> nn.Module:
    """Copy the pre-trained classifier into `model` as the papers copy ImageNet's: the trunk as is; VGG's fc6 and
    fc7 convolutionalized (FCN, same size) or subsampled (DeepLab's smaller fc6 kernels and fewer filters)."""
    from dlcore.heads import subsample_fc

    trunk = {k.removeprefix("backbone."): v for k, v in pretrained.items() if k.startswith("backbone.")}
    missing = model.backbone.load_state_dict(trunk, strict=False).missing_keys
    if missing:
        raise ZooError(f"the pre-trained trunk lacks {missing[:3]}; rebuild it with "
                       f"`{rebuild_command('pretrain-' + ('resnet101' if 'resnet' in model.name else 'vgg16'))}`")
    layers = [pair for m in model.modules() if hasattr(m, "imagenet_fc_layers") for pair in m.imagenet_fc_layers()]
    with torch.no_grad():
        for role, conv in layers:
            key, k = ("fc6", 7) if role == "fc6" else ("fc7", 1)
            w, b = subsample_fc(pretrained[f"{key}.weight"], pretrained[f"{key}.bias"], conv, in_kernel=k)
            conv.weight.copy_(w)
            conv.bias.copy_(b)
    return model


def _vgg_pool4(model: nn.Module) -> int:
    return model.backbone.pool_indices[3]


def frozen_keys(model: nn.Module) -> set[str]:
    """State-dict keys that stay as pre-trained: the trunk's lower part (VGG-16 up to pool4, ResNet-101 up to
    layer3); the last block (conv5 / layer4) learns with the head. FCN keeps fc6 as convolutionalized too:
    nine trained copies of its 7x7 kernel would not fit the zoo's 40 MB."""
    keys = set()
    for k in model.state_dict():
        if model.name.startswith("fcn") and k.startswith("head.fc6."):
            keys.add(k)
        if not k.startswith("backbone."):
            continue
        if "resnet101" in model.name:
            if not k.startswith("backbone.layer4."):
                keys.add(k)
        elif int(k.split(".")[2]) <= _vgg_pool4(model):
            keys.add(k)
    return keys


def load(name: str, seed: int = 0, zoo_dir: Path = ZOO_DIR) -> nn.Module:
    """The trained zoo model `name` of `seed`, in eval mode on the CPU (checked against the manifest)."""
    if seed not in SEEDS:
        raise ValueError(f"the zoo has seeds {SEEDS}, not {seed!r}")
    model = build(name)
    start_from_pretrained(model, load_entry(f"pretrain-{MODELS[name].trunk}", zoo_dir))
    entry = f"{name}-s{seed}"
    state = load_entry(entry, zoo_dir)
    expected = set(model.state_dict()) - frozen_keys(model)
    if set(state) != expected:
        raise ZooError(f"zoo file {entry}.pt does not hold the weights of {name} (e.g. "
                       f"{sorted(set(state) ^ expected)[:2]}); rebuild it with `{rebuild_command(entry)}`")
    model.load_state_dict(state, strict=False)
    return model.eval()


def crf_settings(name: str, zoo_dir: Path = ZOO_DIR) -> dict:
    """The CRF parameters cross-validated for zoo model `name` (dense_crf keyword arguments)."""
    found = read_manifest(zoo_dir)["crf"].get(name)
    if found is None:
        raise ZooError(f"the zoo manifest has no CRF settings for {name!r}; run `{rebuild_command(name + '-s0')}`")
    return dict(found["params"])


# ----------------------------------------------------------------------- the frozen trunk, cached

def scenes(split: str, n: int, offset: int = 0):
    """uint8 images [n,3,S,S] and masks [n,S,S] of SyntheticScenes(split, seed=0) items offset .. offset+n-1."""
    from dlcore.data import SyntheticScenes

    data = SyntheticScenes(split, n=offset + n, size=SIZE, seed=0)
    items = [data[i] for i in range(offset, offset + n)]
    return torch.stack([im for im, _ in items]), torch.stack([m for _, m in items])


def _trunk_kind(model: nn.Module) -> str:
    """Which cached features a model reads (models with the same kind share one cache)."""
    if model.name.startswith("fcn"):
        return "vgg-plain"
    if "resnet101" in model.name:
        return f"resnet-os{model.output_stride}" + ("-msc" if hasattr(model, "scales") else "")
    return "vgg-dense" + ("-msc" if getattr(model, "msc_features", False) else "")


@torch.no_grad()
def trunk_features(model: nn.Module, images: torch.Tensor, batch: int = 16, dtype=torch.float16) -> dict:
    """What the frozen part of `model` computes for uint8 `images`, as `dtype` tensors (fp16: the cache of
    `features`, half the memory; the trained trunks' features are O(1-10), far inside fp16's range)."""
    from dlcore.data.transforms import normalize
    from dlcore.models import scaled_input

    kind = _trunk_kind(model)
    training = model.training
    model.eval()
    b = model.backbone
    out: dict[str, list] = {}
    for lo in range(0, len(images), batch):
        x = normalize(images[lo:lo + batch].to(next(model.parameters()).device))
        if kind.startswith("vgg"):  # VGG-16 up to pool4 (the last pool FCN's skips and DeepLab's MSc read)
            pools = []
            for layer in b.features[:_vgg_pool4(model) + 1]:
                x = layer(x)
                if isinstance(layer, nn.MaxPool2d):
                    pools.append(x)
            parts = {f"pool{i + 1}": p for i, p in enumerate(pools)}
            if not (kind == "vgg-plain" or kind.endswith("msc")):
                parts = {"pool4": parts["pool4"]}
            elif kind == "vgg-plain":
                parts = {"pool3": parts["pool3"], "pool4": parts["pool4"]}
        else:
            parts = {f"layer3@{s}": b.low_level(x if s == 1.0 else scaled_input(x, s))
                     for s in getattr(model, "scales", (1.0,))}
        for k, v in parts.items():
            out.setdefault(k, []).append(v.to(dtype).cpu())
    model.train(training)
    return {k: torch.cat(v) for k, v in out.items()}


def forward_cached(model: nn.Module, feats: dict, images: torch.Tensor) -> torch.Tensor | list:
    """`model(normalize(images))` computed from `trunk_features` (same numbers up to the fp16 cache; tested)."""
    from dlcore.data.transforms import normalize
    from dlcore.models import _resize

    kind = _trunk_kind(model)
    f = {k: v.float() for k, v in feats.items()}
    size = images.shape[-2:]
    if kind.startswith("vgg"):
        top = f["pool4"]
        for layer in model.backbone.features[_vgg_pool4(model) + 1:]:  # conv5 (and FCN's pool5): trained
            top = layer(top)
        if kind == "vgg-plain":
            return model.head(top, [None, None, f["pool3"], f["pool4"]])[:, :, :size[0], :size[1]]
        if kind.endswith("msc"):
            x = normalize(images.to(top.device))
            return _resize(model.head(top, [x] + [f[f"pool{i}"] for i in range(1, 5)]), size)
        return _resize(model.head(top), size)
    maps = [model.head(model.backbone.layer4(f[f"layer3@{s}"])) for s in getattr(model, "scales", (1.0,))]
    if hasattr(model, "scales"):
        return model.fuse(maps, size)
    return _resize(maps[0], size)


def features(model: nn.Module, split: str, n: int, offset: int = 0, zoo_dir: Path = ZOO_DIR,
             cache_dir: Path | None = CACHE_DIR) -> dict:
    """`trunk_features` of the scenes (split, offset .. offset+n-1), cached on disk under build/ by content."""
    kind = _trunk_kind(model)
    trunk_sha = read_manifest(zoo_dir)["entries"].get(f"pretrain-{MODELS[model.zoo_name].trunk}", {}).get("sha256", "none")
    key = hashlib.sha256(json.dumps([FEATURES_VERSION, kind, split, n, offset, SIZE, trunk_sha]).encode()).hexdigest()[:16]
    path = None if cache_dir is None else Path(cache_dir) / f"{kind}-{split}-{key}.pt"
    if path is not None and path.is_file():
        return torch.load(path, weights_only=True)
    images, masks = scenes(split, n, offset)
    feats = {"features": trunk_features(model, images), "images": images, "masks": masks}
    if path is not None:
        atomic_write(path, lambda f: torch.save(feats, f))
    return feats


# ------------------------------------------------------------------------------------------ training

def _seeded_model(name: str, seed: int, zoo_dir: Path) -> nn.Module:
    """Zoo model `name`, its fresh layers drawn from `seed`, started from the pre-trained classifier (and, for
    FCN's later stages, from the previous stage of the same seed: Sec. 4.2's staged training)."""
    from dlcore import seed_everything

    seed_everything(seed)
    model = start_from_pretrained(build(name), load_entry(f"pretrain-{MODELS[name].trunk}", zoo_dir))
    spec = MODELS[name]
    if spec.init_from is not None:  # shares every layer of the previous stage; the new score layer stays at zero
        model.load_state_dict(load_entry(f"{spec.init_from}-s{seed}", zoo_dir), strict=False)
    frozen = frozen_keys(model)
    for k, p in model.named_parameters():
        p.requires_grad_(k not in frozen)
    return model


def schedule(name: str, key: str):
    """STEPS, N_HELDOUT or N_CRF for zoo model `name` (the SHORT schedule's, unless the tiny one is in force)."""
    tiny = STEPS == TINY["STEPS"]
    spec = MODELS[name]
    if tiny or not spec.short:
        return globals()[key]
    return spec.steps if key == "STEPS" and spec.steps else SHORT[key]


def train_model(name: str, seed: int, *, device="cpu", zoo_dir: Path = ZOO_DIR, progress: bool = True) -> dict:
    """Train zoo model `name` for `seed` on the cached trunk features and write zoo/NAME-sSEED.pt; returns its
    manifest record."""
    steps = schedule(name, "STEPS")
    from tqdm.auto import tqdm

    from dlcore.train import param_groups as _param_groups, poly_lr, segmentation_loss

    device = torch.device(device)
    model = _seeded_model(name, seed, zoo_dir).to(device)
    data = features(model, "train", N_TRAIN, zoo_dir=zoo_dir)
    feats, images, masks = data["features"], data["images"], data["masks"]
    optimizer = torch.optim.SGD(_param_groups(model, LR), lr=LR, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(N_TRAIN, generator=g) for _ in range(steps * BATCH // N_TRAIN + 1)])
    model.train()
    start = time.perf_counter()
    for step in tqdm(range(steps), desc=f"{name} s{seed}", disable=not progress):
        idx = order[step * BATCH:(step + 1) * BATCH]
        for group in optimizer.param_groups:
            group["lr"] = poly_lr(LR, step, steps) * group["lr_mult"]
        out = forward_cached(model, {k: v[idx].to(device) for k, v in feats.items()}, images[idx])
        loss = segmentation_loss(out, masks[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    frozen = frozen_keys(model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in frozen}
    stored, storage = _smallest_faithful(model.cpu(), state, zoo_dir)
    info = {"kind": "model", "model": name, "seed": seed, "train_seconds": round(seconds, 1), **storage,
            "recipe": {"build": asdict(MODELS[name]), "width": WIDTH, "size": SIZE, "n_train": N_TRAIN,
                       "steps": steps, "batch_size": BATCH, "lr": LR, "loss": round(float(loss.detach()), 4)},
            "command": rebuild_command(f"{name}-s{seed}"), "machine": _machine(), "date": time.strftime("%Y-%m-%d")}
    _save_entry(f"{name}-s{seed}", stored, info, zoo_dir)
    return info


def _smallest_faithful(model: nn.Module, state: dict, zoo_dir: Path) -> tuple[dict, dict]:
    """int8 storage for the large kernels when it moves val mean IoU by <= 0.1 point against fp32, else fp16."""
    from dlcore.metrics import scores_from_confusion

    data = features(model, "val", N_VAL, zoo_dir=zoo_dir)
    masks = data["masks"].numpy()

    def miou(weights):
        model.load_state_dict(weights, strict=False)
        cm = image_confusions(probabilities(model, data).argmax(1).numpy(), masks, model.num_classes).sum(0)
        return 100 * float(scores_from_confusion(cm)["miou"])

    exact = miou(state)
    results = {}
    for int8 in (True, False):
        stored = pack(state, int8)
        results[int8] = (stored, round(miou(unpack(stored)) - exact, 3))
        if not any(k.endswith("#q") for k in stored):
            break  # nothing large enough: the fp16 file is the int8 one
    model.load_state_dict(state, strict=False)
    int8 = abs(results[True][1]) <= 0.1 and any(k.endswith("#q") for k in results[True][0])
    stored, delta = results[int8] if int8 else results.get(False, results[True])
    return stored, {"storage": "int8 kernels + fp16" if int8 else "fp16", "val_miou_fp32": round(exact, 2),
                    "val_miou_change_stored": delta}


def train_pretrained(arch: str, *, zoo_dir: Path = ZOO_DIR, progress: bool = True) -> dict:
    from dlcore.pretrain import pretrain

    result = pretrain(arch, **PRETRAIN[arch], progress=progress)
    info = {"kind": "pretrain", "arch": arch, "train_seconds": round(result["seconds"], 1),
            "recipe": PRETRAIN[arch], "label_accuracy": round(result["accuracy"], 4),
            "command": rebuild_command(f"pretrain-{arch}"), "machine": _machine(), "date": time.strftime("%Y-%m-%d")}
    _save_entry(f"pretrain-{arch}", pack(result["model"].state_dict()), info, zoo_dir)
    return info


# -------------------------------------------------------------------------------- scoring and the CRF

@torch.no_grad()
def probabilities(model: nn.Module, data: dict, batch: int = 16) -> torch.Tensor:
    """Softmax probabilities float32 [N,L,H,W] of `model` on cached features `data` (from `features`)."""
    model.eval()
    out = []
    for lo in range(0, len(data["images"]), batch):
        f = {k: v[lo:lo + batch] for k, v in data["features"].items()}
        out.append(forward_cached(model, f, data["images"][lo:lo + batch]).float().softmax(1))
    return torch.cat(out)


def image_confusions(labels: np.ndarray, masks: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [N,C,C]: one confusion matrix per image (rows = ground truth; void 255 left out)."""
    from dlcore.metrics import confusion_matrix

    return np.stack([np.asarray(confusion_matrix(torch.as_tensor(p), torch.as_tensor(m), num_classes))
                     for p, m in zip(labels, masks)])


def crf_refine(images: torch.Tensor, probs: torch.Tensor, params: dict) -> np.ndarray:
    """Labels [N,H,W] after dense_crf with `params` (CRF_ITERATIONS mean-field iterations) on each image."""
    from dlcore.crf import dense_crf

    return np.stack([dense_crf(im.permute(1, 2, 0).numpy(), p.numpy(), CRF_ITERATIONS, **params).argmax(0)
                     for im, p in zip(images, probs)])


def crf_search(name: str, zoo_dir: Path = ZOO_DIR, progress: bool = True) -> dict:
    """Cross-validate w1, sigma_alpha, sigma_beta on the held-out scenes for seed 0's model (v1 Sec. 4.2)."""
    import itertools

    from tqdm.auto import tqdm

    from dlcore.metrics import scores_from_confusion

    model = load(name, 0, zoo_dir)
    n_heldout = schedule(name, "N_HELDOUT")
    data = features(model, "val", n_heldout, offset=N_VAL, zoo_dir=zoo_dir)
    probs = probabilities(model, data)
    masks = data["masks"].numpy()
    grid = {}
    for w1, sa, sb in tqdm(list(itertools.product(*CRF_GRID.values())), desc=f"CRF search {name}", disable=not progress):
        params = {"w1": w1, "sigma_alpha": sa, "sigma_beta": sb}
        cm = image_confusions(crf_refine(data["images"], probs, params), masks, model.num_classes).sum(0)
        grid[f"{w1}/{sa}/{sb}"] = round(float(scores_from_confusion(cm)["miou"]), 5)
    best = max(grid, key=grid.get)
    w1, sa, sb = map(float, best.split("/"))
    none = image_confusions(probs.argmax(1).numpy(), masks, model.num_classes).sum(0)
    return {"params": {"w1": w1, "sigma_alpha": sa, "sigma_beta": sb}, "grid": grid, "heldout_scenes": n_heldout,
            "heldout_miou_without": round(float(scores_from_confusion(none)["miou"]), 5)}


# Models whose CRF results the notebooks show (v1's Table 2 set, v2's Table 3 and ResNet's CRF row).
CRF_MODELS = ("deeplab-v1-7x7", "deeplab-v1-4x4", "deeplab-v1-4x4-r8", "deeplab-v1-largefov",
              "deeplab-v1-largefov-msc", "deeplab-v1-4x4-long", "deeplab-v1-largefov-long", "deeplab-v2-vgg-aspp-s", "deeplab-v2-vgg-aspp-l",
              "deeplab-v2-resnet101-aspp-l")
N_CRF = 32  # test scenes refined by the CRF in the zoo's records: val[0:N_CRF]


def record_scores(name: str, seed: int, zoo_dir: Path = ZOO_DIR) -> dict:
    """Per-image confusion matrices on the test scenes, without the CRF (N_VAL) and with it (N_CRF, CRF_MODELS),
    stored in zoo/scores/NAME-sSEED.npz: the CRF is too slow to rerun for every model in a notebook's minutes,
    so notebooks read these and re-check a few images live (`check_recorded`)."""
    model = load(name, seed, zoo_dir)
    data = features(model, "val", N_VAL, zoo_dir=zoo_dir)
    probs = probabilities(model, data)
    masks = data["masks"].numpy()
    out = {"none": image_confusions(probs.argmax(1).numpy(), masks, model.num_classes)}
    if name in CRF_MODELS:
        params = crf_settings(name, zoo_dir)
        n = schedule(name, "N_CRF")
        out["crf"] = image_confusions(crf_refine(data["images"][:n], probs[:n], params), masks[:n],
                                      model.num_classes)
    path = Path(zoo_dir) / "scores" / f"{name}-s{seed}.npz"
    atomic_write(path, lambda f: np.savez_compressed(f, **{k: v.astype(np.int32) for k, v in out.items()}))
    return out


def recorded(name: str, seed: int, zoo_dir: Path = ZOO_DIR) -> dict:
    """The per-image confusions `record_scores` stored: {"none": [N_VAL,C,C], "crf": [N_CRF,C,C] (CRF_MODELS)}."""
    path = Path(zoo_dir) / "scores" / f"{name}-s{seed}.npz"
    if not path.is_file():
        raise ZooError(f"{path} is missing; rebuild it with `{rebuild_command(f'{name}-s{seed}')}`")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k].astype(np.int64) for k in z.files}


# ----------------------------------------------------------------------------------------- the command

def _ok(name: str, zoo_dir: Path) -> bool:
    try:
        info = read_manifest(zoo_dir)["entries"].get(name)
        return info is not None and (Path(zoo_dir) / info["file"]).is_file() and \
            _sha256(Path(zoo_dir) / info["file"]) == info["sha256"]
    except ZooError:
        return False


def _complete(entry: str, zoo_dir: Path) -> bool:
    """The entry's file is there and intact, and (models) so are its recorded scores and CRF settings."""
    if not _ok(entry, zoo_dir):
        return False
    if entry.startswith("pretrain-"):
        return True
    model, seed = _split(entry)
    crf_ok = model not in CRF_MODELS or model in read_manifest(zoo_dir)["crf"]
    return crf_ok and (Path(zoo_dir) / "scores" / f"{entry}.npz").is_file()


def _prerequisites(entries: set, zoo_dir: Path) -> set:
    """The entries `entries` start from (pre-trained trunk, FCN's earlier stages) that are not complete yet."""
    need = set()
    for entry in entries:
        while not entry.startswith("pretrain-"):
            model, seed = _split(entry)
            spec = MODELS[model]
            entry = f"{spec.init_from}-s{seed}" if spec.init_from else f"pretrain-{spec.trunk}"
            if entry not in entries and not _complete(entry, zoo_dir):
                need.add(entry)
    return need


def train_all(only=None, *, force: bool = False, device="cpu", zoo_dir: Path = ZOO_DIR, progress: bool = True,
              log=print) -> list[str]:
    """Train every zoo entry that is missing or altered (or only those in `only`; with force, again even when
    complete), then its scores and the CRF search; an interrupted run resumes with the entries it had not
    finished. Returns the entries trained."""
    names = entry_names()
    if only:
        unknown = [n for n in only if n not in names and n not in MODELS]
        if unknown:
            raise ValueError(f"unknown zoo entry {unknown[0]!r}; known: {', '.join(names)} "
                             f"(or a model name for all its seeds: {', '.join(MODELS)})")
    wanted = set(names)
    if only:
        wanted = {n for n in names if n in only or (not n.startswith("pretrain-") and _split(n)[0] in only)}
        wanted |= _prerequisites(wanted, zoo_dir)
    done = []
    for entry in names:
        if entry not in wanted or (not (force and only) and _complete(entry, zoo_dir)):
            continue
        t0 = time.perf_counter()
        if entry.startswith("pretrain-"):
            info = train_pretrained(entry.removeprefix("pretrain-"), zoo_dir=zoo_dir, progress=progress)
        else:
            model, seed = _split(entry)
            info = train_model(model, seed, device=device, zoo_dir=zoo_dir, progress=progress)
            if model in CRF_MODELS and seed == 0:
                found = crf_search(model, zoo_dir, progress)
                _update_manifest(zoo_dir, lambda manifest: manifest["crf"].__setitem__(model, found))
            record_scores(model, seed, zoo_dir)
        done.append(entry)
        log(f"{entry}: {time.perf_counter() - t0:.0f} s ({info['train_seconds']} s training)")
    return done


def use_tiny_schedule() -> None:
    """Switch this process to the `TINY` schedule (tests and `--schedule tiny`)."""
    g = globals()
    for k, v in TINY.items():
        if k != "PRETRAIN_STEPS":
            g[k] = v
    for arch, recipe in PRETRAIN.items():
        PRETRAIN[arch] = {**recipe, "steps": TINY["PRETRAIN_STEPS"], "n_images": 8, "batch_size": 2}


def add_zoo_arguments(p) -> None:
    sub = p.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    t = sub.add_parser("train", help="train the zoo entries that are missing or altered (resumes an interrupted run)")
    t.add_argument("--only", nargs="+", metavar="NAME", help="retrain these entries (or every seed of a model)")
    t.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    t.add_argument("--zoo-dir", default=str(ZOO_DIR), help=f"where the zoo lives (default {ZOO_DIR})")
    t.add_argument("--schedule", choices=("full", "tiny"), default="full",
                   help="tiny: every code path in seconds, numbers meaningless (needs another --zoo-dir)")
    from dlcore.cli.common import add_debug_argument

    add_debug_argument(t)
    ls = sub.add_parser("list", help="every zoo entry with its state (ok, missing, altered)")
    ls.add_argument("--zoo-dir", default=str(ZOO_DIR), help=f"where the zoo lives (default {ZOO_DIR})")


def run_zoo(args) -> int:
    from dlcore.cli.common import command_error

    zoo_dir = Path(getattr(args, "zoo_dir", ZOO_DIR))
    try:
        if args.zoo_command == "list":
            for entry in entry_names():
                state = "ok" if _ok(entry, zoo_dir) else "missing or altered"
                print(f"{entry:<40} {state}")
            return 0
        from dlcore import resolve_device

        if args.schedule == "tiny":
            if zoo_dir.resolve() == ZOO_DIR.resolve():
                raise ValueError("--schedule tiny would overwrite the shipped zoo; pass --zoo-dir DIR")
            use_tiny_schedule()
        train_all(args.only, force=bool(args.only), device=resolve_device(args.device), zoo_dir=zoo_dir)
    except (ValueError, OSError, FloatingPointError) as e:
        return command_error("zoo", e, args)
    return 0


# --------------------------------------------------------------------------------- what notebooks call

def evaluate(name: str, seeds=None, *, zoo_dir: Path = ZOO_DIR, check_crf: int = 2) -> dict:
    """Per seed: per-image confusions on the test scenes, {"none": [N_VAL,C,C], "crf": [N_CRF,C,C] (CRF_MODELS)}.

    "none" is recomputed here from the shipped weights (seconds), and must equal what `zoo train` recorded;
    "crf" is the record (the CRF on every model and seed takes CPU-minutes), re-checked live on the first
    `check_crf` scenes of each seed. A mismatch (above 0.1% of pixels: float summation order may differ
    between machines) raises ZooError: the records are not of these weights.
    """
    out = {}
    if seeds is None:  # the seeds the zoo holds (all of SEEDS once `zoo train` has finished)
        seeds = seeds_of(name, zoo_dir)
        if not seeds:
            raise ZooError(f"the zoo holds no seed of {name}; run `{rebuild_command(name)}`")
    for seed in seeds:
        model = load(name, seed, zoo_dir)
        data = features(model, "val", N_VAL, zoo_dir=zoo_dir)
        probs = probabilities(model, data)
        masks = data["masks"].numpy()
        live = image_confusions(probs.argmax(1).numpy(), masks, model.num_classes)
        rec = recorded(name, seed, zoo_dir)
        _same(live, rec["none"], f"{name}-s{seed} (no CRF)")
        result = {"none": live}
        if "crf" in rec:
            n = min(check_crf, len(rec["crf"]))
            if n:
                again = image_confusions(crf_refine(data["images"][:n], probs[:n], crf_settings(name, zoo_dir)),
                                         masks[:n], model.num_classes)
                _same(again, rec["crf"][:n], f"{name}-s{seed} (CRF)")
            result["crf"] = rec["crf"]
        out[seed] = result
    return out


def seeds_of(name: str, zoo_dir: Path = ZOO_DIR) -> list[int]:
    """The seeds of zoo model `name` that are complete in `zoo_dir` (all of SEEDS once `zoo train` finished)."""
    return [s for s in SEEDS if _complete(f"{name}-s{s}", Path(zoo_dir))]


def present(models: dict, zoo_dir: Path = ZOO_DIR) -> dict:
    """The {label: name} of `models` that the zoo holds; prints the others with the command that trains them."""
    found = {label: name for label, name in models.items() if seeds_of(name, zoo_dir)}
    for label, name in models.items():
        if label not in found:
            print(f"{label}: not in the zoo yet; its rows and claims are skipped (train it: {rebuild_command(name)})")
    return found


def _same(live: np.ndarray, rec: np.ndarray, what: str) -> None:
    if live.shape != rec.shape:
        raise ZooError(f"the recorded scores of {what} cover {rec.shape[0]} scenes, not {live.shape[0]}; "
                       f"rebuild with `{rebuild_command(what.split(' ')[0])}`")
    moved = np.abs(live - rec).sum() / 2 / max(1, rec.sum())
    if moved > 1e-3:
        raise ZooError(f"the recorded scores of {what} differ from these weights' ({100 * moved:.2f}% of pixels); "
                       f"rebuild with `{rebuild_command(what.split(' ')[0])}`")


def miou(confusions: np.ndarray) -> float:
    """Mean IoU in percent of a stack of per-image confusions (one matrix over all pixels: the VOC protocol)."""
    from dlcore.metrics import scores_from_confusion

    return 100 * float(scores_from_confusion(confusions.sum(0))["miou"])


def over_seeds(values) -> tuple[float, float]:
    """(mean, sample sd) over seeds; the sd of a single seed is nan (unknown, not zero)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def compare(a, b) -> dict:
    """Is mean(a) > mean(b) by more than the seed spread (the larger sd of the two)? Both: one value per seed.
    With fewer than two seeds on a side the spread is unknown and the ordering never holds."""
    (ma, sa), (mb, sb) = over_seeds(a), over_seeds(b)
    gap, spread = ma - mb, max(sa, sb)
    seeds = min(len(a), len(b))
    return {"gap": round(gap, 2), "spread": round(spread, 2), "seeds": seeds, "holds": seeds > 1 and gap > spread}


def within(a, b, points: float) -> dict:
    """Is |mean(a) - mean(b)| at most `points` (plus the seed spread)? "LargeFOV is as good as 7x7"."""
    r = compare(a, b)
    return {**r, "holds": r["seeds"] > 1 and abs(r["gap"]) <= points + r["spread"]}


def at_least(a, b) -> dict:
    """Is mean(a) no worse than mean(b), beyond the seed spread? "Output stride 8 is at least as accurate"."""
    r = compare(a, b)
    return {**r, "holds": r["seeds"] > 1 and r["gap"] >= -r["spread"]}


def verdict(result: dict) -> str:
    """How a claim's measurement reads: holds, NOT reproduced, or unmeasured (fewer than two seeds trained)."""
    if result.get("seeds", 2) < 2:
        return "too few seeds"
    return "holds" if result["holds"] else "NOT reproduced"


def check_claims(claims: dict, not_reproduced) -> None:
    """Each paper claim must hold, except the ones a notebook names as not reproduced (with the measured reason),
    which must still not hold: CI then fails when either kind changes. Claims measured on fewer than two seeds
    (a zoo still being trained) are left unasserted."""
    for text, result in claims.items():
        if verdict(result) == "too few seeds":
            continue
        if text in not_reproduced:
            assert not result["holds"], f"now reproduced, update the notebook: {text} ({result})"
        else:
            assert result["holds"], f"the paper's claim does not hold: {text} ({result})"



def fmt(values) -> str:
    m, sd = over_seeds(values)
    return f"{m:.1f} ± {sd:.1f}" if len(values) > 1 else f"{m:.1f} (1 seed)"


def predictions(name: str, seed: int = 0, n: int = 4, *, crf: bool = False, zoo_dir: Path = ZOO_DIR):
    """(images uint8 [n,3,S,S], masks [n,S,S], labels [n,S,S]) of the first `n` test scenes, for figures;
    crf=True refines them with the model's cross-validated CRF."""
    model = load(name, seed, zoo_dir)
    data = features(model, "val", N_VAL, zoo_dir=zoo_dir)
    data = {"features": {k: v[:n] for k, v in data["features"].items()}, "images": data["images"][:n],
            "masks": data["masks"][:n]}
    probs = probabilities(model, data)
    labels = crf_refine(data["images"], probs, crf_settings(name, zoo_dir)) if crf else probs.argmax(1).numpy()
    return data["images"], data["masks"], torch.as_tensor(labels)


def for_notebook(models, *, smoke: bool, retrain: bool, zoo_dir, retrain_dir) -> Path:
    """The zoo a notebook reads: the shipped one; with retrain, `models` trained anew from the recipe into
    `retrain_dir`; in smoke mode, the same path on the tiny schedule in a fresh temporary folder (every code
    path of the zoo runs, in seconds; the numbers mean nothing)."""
    if smoke:
        import tempfile

        use_tiny_schedule()
        retrain, retrain_dir = True, tempfile.mkdtemp(prefix="dlcore-zoo-smoke-")
    if not retrain:
        return Path(zoo_dir)
    train_all(list(models), force=True, zoo_dir=Path(retrain_dir), progress=not smoke, log=lambda *_: None)
    return Path(retrain_dir)
