"""The frozen lower trunk, memoised: a zoo network runs its own forward, and its frozen stages run once per image.

The zoo trains the last block and the head of each network on a trunk whose lower stages stay as pre-trained
(`trunk.frozen_keys`). Those stages give the same output for the same image every time, so `StemMemo` remembers
it: attached to a backbone as `backbone.stem_memo`, it answers `backbone.stem(x)` for every image it has seen
(keyed by the image's bytes) and computes the others. The network is the ordinary one, trained and evaluated
through its ordinary forward; only the repeated work of its frozen part is skipped.

The stem is computed in fp32, without autograd and with its batch norm in eval mode whatever mode the network is
in: it is frozen, so its running statistics must not move, and the remembered output must not depend on the batch
it first came in.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

_SHARED: dict = {}  # key -> StemMemo shared by every zoo network with the same frozen stem (`shared`)
_SHARED_KEPT = 4


class StemMemo:
    """`backbone.stem(x, *args)`, remembered per image of x (the outputs are per-image: the stem is in eval mode)."""

    def __init__(self):
        self._store: dict = {}

    def __len__(self) -> int:
        return len(self._store)

    def __call__(self, stem, x: torch.Tensor, *args):
        keys = [(_digest(xi), args) for xi in x]
        first: dict = {}  # each image not remembered yet -> its first row in the batch (computed once)
        for i, k in enumerate(keys):
            if k not in self._store:
                first.setdefault(k, i)
        if first:
            out = _compute(stem, x[list(first.values())], args)
            for j, k in enumerate(first):
                self._store[k] = _take(out, j)
        return _stack([self._store[k] for k in keys], x.device)


def _compute(stem, x: torch.Tensor, args):
    """The stem (a bound method of the backbone) in fp32, no autograd, its batch norm in eval mode (restored after)."""
    norms = [m for m in stem.__self__.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = [m.training for m in norms]
    for m in norms:
        m.eval()
    try:
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            return stem(x.float(), *args)
    finally:
        for m, mode in zip(norms, modes):
            m.train(mode)


def _digest(image: torch.Tensor) -> tuple:
    data = image.detach().float().contiguous().cpu().numpy()
    return tuple(image.shape), hashlib.blake2b(data.tobytes(), digest_size=16).digest()


def _take(out, j: int):
    """Image j of a stem's output (a tensor, or a tuple / list of tensors and lists), kept on the CPU."""
    if torch.is_tensor(out):
        return out[j].detach().cpu().clone()
    return type(out)(_take(o, j) for o in out)


def _stack(items: list, device):
    if torch.is_tensor(items[0]):
        return torch.stack(items).to(device)
    return type(items[0])(_stack([it[i] for it in items], device) for i in range(len(items[0])))


def attach(model: nn.Module, memo: StemMemo | None = None) -> nn.Module:
    """Memoise `model`'s frozen stem (a new memo, or `memo`); returns the model."""
    model.backbone.stem_memo = memo if memo is not None else StemMemo()
    return model


def shared(model: nn.Module, key) -> nn.Module:
    """Attach the memo shared by the zoo networks whose stem is the same (`key`: the pre-trained trunk's checksum and
    the backbone's structure): notebooks that score several heads on one trunk compute it once per image."""
    key = (key, repr(model.backbone))
    if key not in _SHARED:
        _SHARED[key] = StemMemo()
        while len(_SHARED) > _SHARED_KEPT:
            del _SHARED[next(iter(_SHARED))]
    return attach(model, _SHARED[key])
