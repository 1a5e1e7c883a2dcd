"""Networks from the zoo: the pre-trained classifier copied in as the papers copy ImageNet's, the frozen lower
trunk whose features are computed once and cached, and the trained part run on that cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dlcore.io import atomic_write
from dlcore.zoo import recipe
from dlcore.zoo.recipe import CACHE_DIR, FEATURES_VERSION, MODELS, ZOO_DIR, ZooError, build, rebuild_command
from dlcore.zoo.store import load_entry, read_manifest

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
    if isinstance(seed, bool) or not isinstance(seed, int) or seed not in recipe.SEEDS:  # True == 1, 1.0 == 1
        raise ValueError(f"the zoo has seeds {recipe.SEEDS}, not {seed!r}")
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


def scenes(split: str, n: int, offset: int = 0):
    """uint8 images [n,3,S,S] and masks [n,S,S] of SyntheticScenes(split, seed=0) items offset .. offset+n-1."""
    from dlcore.data import SyntheticScenes

    data = SyntheticScenes(split, n=offset + n, size=recipe.SIZE, seed=0)
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
    maps = _resnet_maps(model, f)
    if hasattr(model, "scales"):
        return model.fuse(maps, size)
    return _resize(maps[0], size)


def _resnet_maps(model: nn.Module, f: dict) -> list:
    """ResNet-101's trained part (layer4 and the head) on the cached layer3 features of each input scale."""
    return [model.head(model.backbone.layer4(f[f"layer3@{s}"])) for s in getattr(model, "scales", (1.0,))]


def features(model: nn.Module, split: str, n: int, offset: int = 0, zoo_dir: Path = ZOO_DIR,
             cache_dir: Path | None = CACHE_DIR) -> dict:
    """`trunk_features` of the scenes (split, offset .. offset+n-1), cached on disk under build/ by content."""
    kind = _trunk_kind(model)
    trunk_sha = read_manifest(zoo_dir)["entries"].get(f"pretrain-{MODELS[model.zoo_name].trunk}", {}).get("sha256", "none")
    key = hashlib.sha256(json.dumps([FEATURES_VERSION, kind, split, n, offset, recipe.SIZE, trunk_sha]).encode()).hexdigest()[:16]
    path = None if cache_dir is None else Path(cache_dir) / f"{kind}-{split}-{key}.pt"
    if path is not None and path.is_file():
        return torch.load(path, weights_only=True)
    images, masks = scenes(split, n, offset)
    feats = {"features": trunk_features(model, images), "images": images, "masks": masks}
    if path is not None:
        atomic_write(path, lambda f: torch.save(feats, f))
    return feats


@torch.no_grad()
def probabilities(model: nn.Module, data: dict, batch: int = 16) -> torch.Tensor:
    """Softmax probabilities float32 [N,L,H,W] of `model` on cached features `data` (from `features`)."""
    model.eval()
    out = []
    for lo in range(0, len(data["images"]), batch):
        f = {k: v[lo:lo + batch] for k, v in data["features"].items()}
        out.append(forward_cached(model, f, data["images"][lo:lo + batch]).float().softmax(1))
    return torch.cat(out)


def labels_of(probs: torch.Tensor) -> np.ndarray:
    """int64 labels [N,H,W]: probs [N,L,H,W].argmax(1), taken over the last axis of a channels-last copy (the
    same first-maximum rule, 3x faster on a CPU than a reduction over the strided class axis)."""
    return probs.permute(0, 2, 3, 1).contiguous().argmax(-1).numpy()


@torch.no_grad()
def branch_labels(model: nn.Module, data: dict, batch: int = 16) -> dict:
    """A ResNet-101 MSC model's labels from each input scale's branch alone and from their max-fused map, on cached
    features `data`: what each scale contributes (notebook 07)."""
    from dlcore.models import _resize

    model.eval()
    size = data["images"].shape[-2:]
    out: dict[str, list] = {}
    for lo in range(0, len(data["images"]), batch):
        maps = _resnet_maps(model, {k: v[lo:lo + batch].float() for k, v in data["features"].items()})
        for s, m in zip(model.scales, maps):
            out.setdefault(f"scale {s}", []).append(_resize(m, size).argmax(1))
        out.setdefault("fused (max)", []).append(model.fuse(maps, size).argmax(1))
    return {k: torch.cat(v).numpy() for k, v in out.items()}
