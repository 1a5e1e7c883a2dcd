"""Networks from the zoo: the pre-trained classifier copied in as the papers copy ImageNet's, the frozen lower
trunk (memoised: `dlcore.zoo.memo`), the zoo's scenes, and the networks' probabilities on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from dlcore.zoo import memo
from dlcore.zoo.recipe import MODELS, ZOO_DIR, Schedule, ZooError, build, rebuild_command
from dlcore.zoo.store import load_entry, read_manifest, schedule_of

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


def fixed_keys(model: nn.Module) -> set[str]:
    """The weights the architecture itself fixes: FCN's final bilinear upsampling (FCN Sec. 4.3)."""
    return {f"{name}.weight" for name, m in model.named_modules() if getattr(m, "fixed", False)}


def frozen_keys(model: nn.Module) -> set[str]:
    """State-dict keys that stay as pre-trained: the trunk's lower part (VGG-16 up to pool4, ResNet-101 up to
    layer3); the last block (conv5 / layer4) learns with the head. FCN keeps fc6 as convolutionalized too:
    nine trained copies of its 7x7 kernel would not fit the zoo's 40 MB. FCN's final upsampling is fixed bilinear
    (FCN Sec. 4.3), built that way and never trained (`fixed_keys`)."""
    keys = fixed_keys(model)
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
    """The trained zoo model `name` of `seed`, in eval mode on the CPU (checked against the manifest), its frozen
    stem memoised with every zoo network of the same trunk in this process."""
    seeds = schedule_of(zoo_dir).seeds
    if isinstance(seed, bool) or not isinstance(seed, int) or seed not in seeds:  # True == 1, 1.0 == 1
        raise ValueError(f"the zoo has seeds {seeds}, not {seed!r}")
    model = build(name)
    trunk = f"pretrain-{MODELS[name].trunk}"
    start_from_pretrained(model, load_entry(trunk, zoo_dir))
    entry = f"{name}-s{seed}"
    state = load_entry(entry, zoo_dir)
    expected = set(model.state_dict()) - frozen_keys(model)
    if set(state) != expected:
        raise ZooError(f"zoo file {entry}.pt does not hold the weights of {name} (e.g. "
                       f"{sorted(set(state) ^ expected)[:2]}); rebuild it with `{rebuild_command(entry, zoo_dir)}`")
    model.load_state_dict(state, strict=False)
    memo.shared(model, read_manifest(zoo_dir)["entries"][trunk]["sha256"])
    return model.eval()


def scenes(schedule: Schedule, split: str, n: int, offset: int = 0, draw: int = 0) -> dict:
    """{"images": uint8 [n,3,S,S], "masks": [n,S,S]}: SyntheticScenes(split, seed=draw) items offset .. offset+n-1 at
    the schedule's size."""
    from dlcore.data import SyntheticScenes

    data = SyntheticScenes(split, n=offset + n, size=schedule.size, seed=draw)
    items = [data[i] for i in range(offset, offset + n)]
    return {"images": torch.stack([im for im, _ in items]), "masks": torch.stack([m for _, m in items])}


def test_scenes(zoo_dir: Path = ZOO_DIR, n: int | None = None) -> dict:
    """The zoo's test scenes (the first `n`, default all of the schedule's n_test): what its tables are scored on."""
    schedule = schedule_of(zoo_dir)
    return scenes(schedule, "val", schedule.n_test if n is None else min(n, schedule.n_test), draw=schedule.test_draw)


def heldout_scenes(zoo_dir: Path, n: int) -> dict:
    """The scenes every choice is made on (the CRF's cross-validation, the storage check): never scored."""
    schedule = schedule_of(zoo_dir)
    return scenes(schedule, "val", n, offset=schedule.heldout_offset)


def logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor | list:
    """`model(normalize(images))`: the network's own forward (its frozen stem memoised when it is a zoo model)."""
    from dlcore.data.transforms import normalize

    return model(normalize(images))


@torch.no_grad()
def probabilities(model: nn.Module, data: dict, batch: int = 16) -> torch.Tensor:
    """Softmax probabilities float32 [N,L,H,W] of `model` (eval mode) on the scenes `data` ({"images": ...})."""
    model.eval()
    images = data["images"]
    return torch.cat([logits(model, images[lo:lo + batch]).float().softmax(1) for lo in range(0, len(images), batch)])


def labels_of(probs: torch.Tensor) -> np.ndarray:
    """int64 labels [N,H,W]: probs [N,L,H,W].argmax(1), taken over the last axis of a channels-last copy (the
    same first-maximum rule, 3x faster on a CPU than a reduction over the strided class axis)."""
    return probs.permute(0, 2, 3, 1).contiguous().argmax(-1).numpy()


@torch.no_grad()
def branch_labels(model: nn.Module, data: dict, batch: int = 16) -> dict:
    """A DeepLab-v2 MSC model's labels from each input scale's branch alone and from their max-fused map, on the
    scenes `data`: what each scale contributes (notebook 07)."""
    from dlcore.data.transforms import normalize
    from dlcore.models import _resize, scaled_input

    model.eval()
    size = data["images"].shape[-2:]
    out: dict[str, list] = {}
    for lo in range(0, len(data["images"]), batch):
        x = normalize(data["images"][lo:lo + batch])
        maps = [model.scores(x if s == 1.0 else scaled_input(x, s)) for s in model.scales]
        for s, m in zip(model.scales, maps):
            out.setdefault(f"scale {s}", []).append(_resize(m, size).argmax(1))
        out.setdefault("fused (max)", []).append(model.fuse(maps, size).argmax(1))
    return {k: torch.cat(v).numpy() for k, v in out.items()}
