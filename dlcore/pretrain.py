"""The teaching runs' stand-in for ImageNet pre-training: image classification on SyntheticScenes.

FCN (Sec. 3.1, 4.1) and DeepLab (v1 Sec. 3.1, v2 Sec. 3.1) start from nets trained to *classify* ImageNet
images, and only then compare heads, strides and skips. A stand-in must favour no head, so it is trained on
image-level labels only, with no spatial supervision: the nets here are classifiers, built as ImageNet's are.

- `VGGClassifier`: VGG-16 (batch norm, stride 32) then fc6 (a fully connected layer on the 7 x 7 pool5 of a
  224 x 224 image), fc7 and fc8, as VGG-16 itself. FCN convolutionalizes fc6/fc7 (`dlcore.zoo`), DeepLab v1
  subsamples them to 4x4 / 3x3 (`dlcore.heads.subsample_fc`), exactly as the papers treat ImageNet's.
- `ResNetClassifier`: ResNet-101 at output stride 32, global average pooling, one fc layer.

The task (`SceneLabels`): which of the 11 classes cover at least `MIN_FRACTION` of a 224 x 224 scene,
a multi-label classification (one sigmoid per class). Departure from ImageNet's one label per image, named:
several labels per image carry more signal per CPU second, and the labels are still image-level.

Second departure, named and measured: ImageNet's 1.2M images teach features that are already locally
discriminative (FCN's own skip results rest on it); 20k synthetic images do not. Classification alone reached
73% per-label accuracy (the class prior gives 68%), and a LargeFOV head trained on those frozen features 15%
mean IoU. So the stand-in adds an auxiliary *probe* (`probe`): a 1x1 convolution on the stride-16 features
(VGG's pool4, ResNet's layer3) trained to label pixels, its loss added to the classifier's. The probe is
discarded afterwards: no network the notebooks compare has it, and every head, skip and stride starts fresh
on the same features.
The scenes come from their own random stream (`PRETRAIN_SEED`), never the zoo's training or validation scenes.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dlcore.backbones import ResNet101, VGG16, scaled

CROP = 224  # ImageNet's training crop: pool5 is then 7 x 7, the window VGG-16's fc6 reads
MIN_FRACTION = 0.005  # a class is "in the image" when it covers at least 0.5% of its valid pixels
PRETRAIN_SEED = 1000  # the scenes' stream: far from the zoo's seeds 0, 1, 2


class SceneLabels(torch.utils.data.Dataset):
    """(image uint8 [3,224,224], labels float [C] in {0,1}): which classes appear in a SyntheticScenes scene."""

    def __init__(self, n: int, *, size: int = CROP, seed: int = PRETRAIN_SEED, split: str = "train"):
        from dlcore.data import SyntheticScenes

        self.scenes = SyntheticScenes(split, n=n, size=size, seed=seed)
        self.num_classes = self.scenes.num_classes

    def __len__(self):
        return len(self.scenes)

    def __getitem__(self, i):
        image, mask = self.scenes[i]
        counts = torch.bincount(mask[mask != 255].flatten(), minlength=self.num_classes)[: self.num_classes]
        return image, (counts >= MIN_FRACTION * counts.sum()).float(), mask


class VGGClassifier(nn.Module):
    """VGG-16 (batch norm) as a classifier: pool5 [C,7,7] -> fc6 -> fc7 -> fc8 (dropout 0.5 after fc6 and fc7)."""

    def __init__(self, width: float, num_classes: int):
        super().__init__()
        self.backbone = VGG16(width, batch_norm=True)
        hidden = scaled(4096, width)
        self.fc6 = nn.Linear(self.backbone.out_channels * 7 * 7, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.fc8 = nn.Linear(hidden, num_classes)
        self.probe = nn.Conv2d(self.backbone.pool_channels[3], num_classes, 1)

    def forward(self, x):
        return self.forward_with_probe(x)[0]

    def forward_with_probe(self, x):
        """(class logits [B,C], the probe's pixel logits [B,C,H/16,W/16] on pool4)."""
        if tuple(x.shape[-2:]) != (CROP, CROP):
            raise ValueError(f"the classifier reads {CROP} x {CROP} images (a 7 x 7 pool5), got {tuple(x.shape[-2:])}")
        pool5, pools = self.backbone(x, return_pools=True)
        x = F.dropout(F.relu(self.fc6(pool5.flatten(1))), 0.5, self.training)
        x = F.dropout(F.relu(self.fc7(x)), 0.5, self.training)
        return self.fc8(x), self.probe(pools[3])


class ResNetClassifier(nn.Module):
    """ResNet-101 at output stride 32 (ImageNet's), global average pooling, fc to the classes."""

    def __init__(self, width: float, num_classes: int):
        super().__init__()
        self.backbone = ResNet101(width, output_stride=32)
        self.fc = nn.Linear(self.backbone.out_channels, num_classes)
        self.probe = nn.Conv2d(scaled(1024, width), num_classes, 1)

    def forward(self, x):
        return self.forward_with_probe(x)[0]

    def forward_with_probe(self, x):
        """(class logits [B,C], the probe's pixel logits [B,C,H/16,W/16] on layer3)."""
        low = self.backbone.low_level(x)
        return self.fc(self.backbone.layer4(low).mean((2, 3))), self.probe(low)


CLASSIFIERS = {"vgg16": VGGClassifier, "resnet101": ResNetClassifier}


def pretrain(arch: str, *, width: float, steps: int, batch_size: int = 16, lr: float = 0.02, n_images: int = 8192,
             seed: int = 0, progress: bool = True) -> dict:
    """Train a `CLASSIFIERS[arch]` on `SceneLabels` with SGD (momentum 0.9, weight decay 5e-4, poly lr, random
    horizontal flips); returns {"model", "seconds", "loss", "accuracy" (per-label, on 512 held-out scenes)}."""
    from tqdm.auto import tqdm

    from dlcore.data.transforms import normalize
    from dlcore.train import poly_lr

    torch.manual_seed(seed)
    data = SceneLabels(n_images)
    model = CLASSIFIERS[arch](width, data.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=g)
    start, losses = time.perf_counter(), []
    model.train()
    for step in tqdm(range(steps), desc=f"pre-train {arch}", disable=not progress):
        idx = [int(order[(step * batch_size + j) % len(data)]) for j in range(batch_size)]
        images, labels, masks = map(torch.stack, zip(*(data[i] for i in idx)))
        flip = torch.rand(batch_size, generator=g) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        masks = torch.where(flip[:, None, None], masks.flip(-1), masks)
        for group in optimizer.param_groups:
            group["lr"] = poly_lr(lr, step, steps)
        logits, probe = model.forward_with_probe(normalize(images))
        probe = F.interpolate(probe, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.binary_cross_entropy_with_logits(logits, labels) + F.cross_entropy(probe, masks, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - start
    return {"model": model.eval(), "seconds": seconds, "loss": float(np.mean(losses[-20:])),
            "accuracy": label_accuracy(model, SceneLabels(512, split="val"))}


@torch.no_grad()
def label_accuracy(model: nn.Module, data: SceneLabels, batch_size: int = 32) -> float:
    """Fraction of (image, class) presence decisions the classifier gets right (threshold 0.5)."""
    from dlcore.data.transforms import normalize

    model.eval()
    right = total = 0
    for lo in range(0, len(data), batch_size):
        images, labels, _ = map(torch.stack, zip(*(data[i] for i in range(lo, min(lo + batch_size, len(data))))))
        pred = model(normalize(images)) > 0
        right += int((pred == labels.bool()).sum())
        total += labels.numel()
    return right / total
