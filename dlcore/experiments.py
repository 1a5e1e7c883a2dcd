"""Shared training/evaluation recipes for the notebooks (01 FCN, 03 DeepLab v1, 05 boundaries, 06 ASPP).

One call, `train_and_score(name, width=..., steps=...)`, builds a network, trains it on SyntheticScenes
through `dlcore.engine.train`, scores it on the validation split and caches the trained weights under
`build/cache/` keyed by a hash of the whole recipe, so that two notebooks asking for the same recipe train
it once. Also the two small constructions FCN §3.1 is built on: `convolutionalize` (a fully connected layer
seen as a convolution).
"""

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / "build" / "cache"


def convolutionalize(fc: nn.Linear, in_channels: int, kernel_size: int) -> nn.Conv2d:
    """FCN §3.1: a fully connected layer on a C x k x k input is a k x k convolution with the same weights.

    Run on a larger input, the convolution evaluates the classifier at every k x k window (stride 1) in one
    pass, which is what makes a classification net "fully convolutional".
    """
    if fc.in_features != in_channels * kernel_size * kernel_size:
        raise ValueError(
            f"a Linear with {fc.in_features} inputs cannot read a {in_channels} x {kernel_size} x {kernel_size} "
            f"window ({in_channels * kernel_size ** 2} values); pass the in_channels and kernel_size it was trained on"
        )
    conv = nn.Conv2d(in_channels, fc.out_features, kernel_size, bias=fc.bias is not None)
    with torch.no_grad():
        # nn.Flatten on [C,k,k] is channel-major, the same order as Conv2d's weight [out, C, k, k].
        conv.weight.copy_(fc.weight.view(fc.out_features, in_channels, kernel_size, kernel_size))
        if fc.bias is not None:
            conv.bias.copy_(fc.bias)
    return conv


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the trained weights: its hash names the cache file."""

    name: str
    width: float = 0.25
    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-2
    size: int = 64
    n_train: int = 256
    seed: int = 0
    init_from: str | None = None  # key of the recipe whose weights start this one (FCN staged training, §4.2)
    trunk_from: str | None = None  # key of the pre-trained recipe whose VGG-16 trunk starts this one
    trunk_fc: bool = False  # also start every fc6/fc7 of the head from the pre-trained LargeFOV's (DeepLab v2 Sec. 4.1)
    options: dict = field(default_factory=dict)

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return f"{self.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


@dataclass
class Trained:
    recipe: Recipe
    model: nn.Module
    images_per_s: float  # training throughput measured when it was trained (cached with the weights)
    scores: dict | None = None

    @property
    def key(self) -> str:
        return self.recipe.key()


def _check_recipe(recipe: Recipe) -> None:
    from dlcore.models import available

    if recipe.name not in available():
        raise ValueError(f"unknown model {recipe.name!r}; choose one of dlcore.models.available(): {available()}")
    for attr in ("steps", "batch_size", "size", "n_train"):
        if getattr(recipe, attr) < 1:
            raise ValueError(f"{attr} must be >= 1, got {getattr(recipe, attr)}")
    if recipe.width <= 0:
        raise ValueError(f"width must be > 0, got {recipe.width}")


def _train_set(recipe: Recipe):
    from dlcore.data import SyntheticScenes

    return SyntheticScenes("train", n=recipe.n_train, size=recipe.size, seed=recipe.seed)


def _load_start(model: nn.Module, init: "Trained", prefix: str = "") -> None:
    """Copy every parameter (under `prefix`) that `init` shares with `model`, by name and shape.

    Staged FCN training (§4.2) copies everything, so the new skip layers alone keep their init; starting from
    the pre-trained trunk copies `backbone.` only, so every head starts fresh, as the papers' heads do.
    """
    mine = model.state_dict()
    shared = {k: v for k, v in init.model.state_dict().items()
              if k.startswith(prefix) and k in mine and mine[k].shape == v.shape}
    if not shared:
        raise ValueError(f"{init.recipe.name} shares no {prefix or 'parameter'} weights with this model")
    model.load_state_dict(shared, strict=False)


def _load_fc(model: nn.Module, trunk: "Trained") -> None:
    """Every fc6/fc7 the head declares starts from the pre-trained LargeFOV's, as DeepLab v2 starts every ASPP
    branch from the same (ImageNet) fc6/fc7: the branches then differ only by their rate."""
    source = {"fc6": trunk.model.head.fc6, "fc7": trunk.model.head.fc7}
    layers = [pair for m in model.modules() if hasattr(m, "imagenet_fc_layers") for pair in m.imagenet_fc_layers()]
    if not layers:
        raise ValueError(f"{model.name} has no fc6/fc7 to start from the pre-trained head")
    with torch.no_grad():
        for role, conv in layers:
            if conv.weight.shape != source[role].weight.shape:
                raise ValueError(f"{model.name}'s {role} is {tuple(conv.weight.shape)}, the pre-trained one "
                                 f"{tuple(source[role].weight.shape)}: only 3x3 LargeFOV-sized heads can start from it")
            conv.weight.copy_(source[role].weight)
            conv.bias.copy_(source[role].bias)


def train(recipe: Recipe, *, device="cpu", init: "Trained | None" = None, trunk: "Trained | None" = None,
          cache_dir=CACHE_DIR) -> Trained:
    """Train `recipe` (or load it from `cache_dir` when it was trained before) and return the model in eval mode.

    init: the Trained whose weights start this one (recipe.init_from is its key); trunk: the pre-trained net
    whose backbone starts this one (recipe.trunk_from is its key, see `pretrained_trunk`).
    """
    from dlcore import engine, seed_everything
    from dlcore.models import build_model

    _check_recipe(recipe)
    if (init is None) != (recipe.init_from is None) or (init is not None and init.key != recipe.init_from):
        raise ValueError("pass init=<the Trained whose key is recipe.init_from>, or neither")
    if (trunk is None) != (recipe.trunk_from is None) or (trunk is not None and trunk.key != recipe.trunk_from):
        raise ValueError("pass trunk=<the Trained whose key is recipe.trunk_from>, or neither")
    seed_everything(recipe.seed)
    model = build_model(recipe.name, num_classes=_train_set(recipe).num_classes, width=recipe.width, **recipe.options)
    path = Path(cache_dir) / f"{recipe.key()}.pt"
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        return Trained(recipe, model.eval(), float(state["images_per_s"]))
    if trunk is not None:
        _load_start(model, trunk, prefix="backbone.")
        if recipe.trunk_fc:
            _load_fc(model, trunk)
    if init is not None:
        _load_start(model, init)
    start = time.perf_counter()
    engine.train(model, _train_set(recipe), steps=recipe.steps, batch_size=recipe.batch_size, lr=recipe.lr,
                 device=device)
    images_per_s = recipe.steps * recipe.batch_size / (time.perf_counter() - start)
    model = model.cpu().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "images_per_s": images_per_s, "recipe": asdict(recipe)}, tmp)
    os.replace(tmp, path)  # atomic: a notebook killed mid-write never leaves a half checkpoint behind
    return Trained(recipe, model, images_per_s)


def score(trained: Trained, *, n_val: int = 64, device="cpu", **evaluate_options) -> dict:
    """Score on SyntheticScenes("val") with `dlcore.engine.evaluate`; FCN Table 2's four columns and per-class IoU."""
    from dlcore import engine
    from dlcore.data import SyntheticScenes

    r = trained.recipe
    val = SyntheticScenes("val", n=n_val, size=r.size, seed=r.seed)
    trained.scores = engine.evaluate(trained.model, val, val.num_classes, device=device, **evaluate_options)
    return trained.scores


def train_and_score(name: str, *, device="cpu", init: Trained | None = None, trunk: Trained | None = None,
                    n_val: int = 64, cache_dir=CACHE_DIR, **recipe) -> Trained:
    """`train` then `score`: the one call the notebooks make per row of a results table."""
    trained = train(Recipe(name, init_from=init.key if init else None, trunk_from=trunk.key if trunk else None,
                           **recipe), device=device, init=init, trunk=trunk, cache_dir=cache_dir)
    score(trained, n_val=n_val, device=device)
    return trained


TABLE_COLUMNS = ("pixel_acc", "mean_acc", "miou", "fwiou")


def table_row(trained: Trained) -> dict:
    """One row of FCN Table 2 / DeepLab Table 2 style results, in percent, rounded so printed output is stable."""
    if trained.scores is None:
        raise ValueError(f"{trained.recipe.name} has no scores yet; call dlcore.experiments.score(trained) first")
    row = {"model": trained.recipe.name}
    row.update({c: round(100 * float(trained.scores[c]), 1) for c in TABLE_COLUMNS})
    row["train img/s"] = round(trained.images_per_s, 1)
    return row


def pretrained_trunk(*, width: float = 0.25, size: int = 64, steps: int = 3000, seed: int = 0, device="cpu",
                     cache_dir=CACHE_DIR) -> Trained:
    """The teaching runs' stand-in for ImageNet pre-training: a batch-norm VGG-16 trunk trained once, then shared.

    Every network of the papers starts from an ImageNet-trained VGG-16 (FCN Sec. 4.1, DeepLab v1 Sec. 4.1) and
    only then compares heads, strides and skips. Trained from scratch for the minute a notebook can give each
    net, a 16-layer VGG stays near the class prior (benchmarks/RESULTS.md, "Caveat for the notebooks"), so
    the comparisons would be noise. Instead DeepLab-LargeFOV (with `batch_norm=True`) is trained here for
    `steps` on 2,048 SyntheticScenes, once: the result is cached under build/cache/ like every recipe, and the
    notebooks start each net from its `backbone.` weights (`train_and_score(..., trunk=...)`), heads fresh.
    """
    recipe = Recipe("deeplab-v1-largefov", width=width, steps=steps, batch_size=8, lr=1e-2, size=size,
                    n_train=2048, seed=seed, options={"batch_norm": True})
    return train(recipe, device=device, cache_dir=cache_dir)
