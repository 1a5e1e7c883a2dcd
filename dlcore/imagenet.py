"""ImageNet initialisation: torchvision's VGG-16 / ResNet-101 weights into a dlcore model's trunk and fc6/fc7.

The papers start every network from an ImageNet classifier. The trunks (`dlcore.backbones`) keep torchvision's
module names, so its state dicts load key by key at width 1.0; VGG-16's classifier initialises the fc6/fc7 that
each head declares (`imagenet_fc_layers()`): convolutionalized exactly for FCN (Sec. 3.1), subsampled for
DeepLab (v1 Sec. 3.2), both by `dlcore.heads.subsample_fc`. `build_model(..., weights=...)` calls this.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from dlcore.backbones import ResNet101, VGG16
from dlcore.heads import subsample_fc

__all__ = ["load_torchvision_weights", "imagenet_weights"]


def _state_dict_of(weights) -> Mapping[str, torch.Tensor]:
    if isinstance(weights, Mapping):
        return weights
    if isinstance(weights, (str, os.PathLike)):
        if not os.path.exists(weights):
            raise FileNotFoundError(f"no weights file at {os.fspath(weights)!r}; pass a torchvision state dict saved "
                                    f"with torch.save(model.state_dict(), path), or a torchvision weights enum")
        from dlcore.checkpoint import read_torch_file

        state = read_torch_file(weights, "weights file", "pass a torchvision state dict saved with "
                                "torch.save(model.state_dict(), path)", legacy_ok=True)
        if isinstance(state, Mapping) and "state_dict" in state and not any(k.endswith("weight") for k in state):
            state = state["state_dict"]
        if not isinstance(state, Mapping):
            raise ValueError(f"{os.fspath(weights)!r} does not hold a state dict (got {type(state).__name__})")
        return state
    if hasattr(weights, "get_state_dict"):  # a torchvision WeightsEnum: downloads once into torch's cache
        return weights.get_state_dict(progress=True, check_hash=True)
    raise ValueError(f"weights must be a torchvision weights enum (e.g. VGG16_Weights.IMAGENET1K_V1), a file path "
                     f"or a state dict, got {type(weights).__name__}")


def _copy(param: torch.Tensor, value: torch.Tensor, key: str) -> None:
    if tuple(param.shape) != tuple(value.shape):
        raise ValueError(f"torchvision weight {key!r} has shape {tuple(value.shape)} but the model expects "
                         f"{tuple(param.shape)}: is it the right architecture (VGG-16 / ResNet-101) at width 1.0?")
    with torch.no_grad():
        param.copy_(value)


def _load_trunk(trunk: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    own = trunk.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"the torchvision state dict lacks {len(missing)} keys of the {type(trunk).__name__} trunk, "
                         f"e.g. {missing[:3]}: is it a {type(trunk).__name__} state dict?")
    params = dict(trunk.named_parameters())
    params.update(trunk.named_buffers())
    for key, tensor in params.items():
        if key in state:
            _copy(tensor, state[key], key)


def load_torchvision_weights(model: nn.Module, weights) -> nn.Module:
    """Initialise `model`'s trunk (and VGG's fc6/fc7) from torchvision ImageNet weights; returns `model`.

    `model`: a VGG16 / ResNet101 trunk, or any dlcore model holding one. `weights`: a torchvision enum
    (`VGG16_Weights.IMAGENET1K_V1`, `ResNet101_Weights.IMAGENET1K_V1`: downloaded once by torchvision), a path
    to a saved torchvision state dict (loaded with weights_only=True) or a state dict. The ImageNet classifier
    of VGG-16 initialises every fc6/fc7 the heads declare (`imagenet_fc_layers()`): convolutionalized exactly
    for FCN, subsampled for DeepLab (`subsample_fc`). Class-score layers (fc8, score_*) keep their init.
    """
    trunks = [m for m in model.modules() if isinstance(m, (VGG16, ResNet101))]
    if not trunks:
        raise ValueError(f"{type(model).__name__} holds no VGG16 or ResNet101 trunk to load torchvision weights into")
    for trunk in trunks:
        if trunk.width != 1.0:
            raise ValueError(f"ImageNet weights fit the papers' channel counts only: build the model with width=1.0 "
                             f"(got width={trunk.width})")
    state = _state_dict_of(weights)
    for trunk in trunks:
        if isinstance(trunk, VGG16):
            _load_trunk(trunk, {k: v for k, v in state.items() if k.startswith("features.")})
        else:
            _load_trunk(trunk, {k: v for k, v in state.items() if not k.startswith("fc.")})
    fc_layers = [pair for m in model.modules() if hasattr(m, "imagenet_fc_layers") for pair in m.imagenet_fc_layers()]
    if fc_layers:
        for key in ("classifier.0.weight", "classifier.3.weight"):
            if key not in state:
                raise ValueError(f"the state dict has no {key!r}: fc6/fc7 are initialised from VGG-16's classifier")
        for role, conv in fc_layers:
            # torchvision's classifier: [0] Linear(512*7*7, 4096) = fc6, [3] Linear(4096, 4096) = fc7
            i, k = (0, 7) if role == "fc6" else (3, 1)
            w, b = subsample_fc(state[f"classifier.{i}.weight"], state.get(f"classifier.{i}.bias"), conv, in_kernel=k)
            _copy(conv.weight, w, f"classifier.{i}.weight (as {role})")
            if conv.bias is not None and b is not None:
                _copy(conv.bias, b, f"classifier.{i}.bias (as {role})")
    return model


def imagenet_weights(trunk: nn.Module):
    """The torchvision enum `weights="imagenet"` stands for (IMAGENET1K_V1, as the papers used ImageNet-1k)."""
    from torchvision.models import ResNet101_Weights, VGG16_BN_Weights, VGG16_Weights

    if isinstance(trunk, VGG16):
        return VGG16_BN_Weights.IMAGENET1K_V1 if trunk.batch_norm else VGG16_Weights.IMAGENET1K_V1
    return ResNet101_Weights.IMAGENET1K_V1
