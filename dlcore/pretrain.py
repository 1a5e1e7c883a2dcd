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

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dlcore.backbones import ResNet101, VGG16, scaled

CROP = 224  # ImageNet's training crop: pool5 is then 7 x 7, the window VGG-16's fc6 reads
MIN_FRACTION = 0.005  # a class is "in the image" when it covers at least 0.5% of its valid pixels
PRETRAIN_SEED = 1000  # the scenes' stream: far from the zoo's seeds 0, 1, 2


class SceneLabels(torch.utils.data.Dataset):
    """(image uint8 [3,224,224], labels float [C] in {0,1}, mask): which classes appear in a SyntheticScenes scene."""

    def __init__(self, n: int, *, size: int = CROP, seed: int = PRETRAIN_SEED, split: str = "train"):
        from dlcore.data import SyntheticScenes

        self.scenes = SyntheticScenes(split, n=n, size=size, seed=seed)
        self.num_classes = self.scenes.num_classes

    def __len__(self):
        return len(self.scenes)

    def __getitem__(self, i):
        image, mask = self.scenes[i]
        return image, presence(mask[None], self.num_classes)[0], mask


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
        """Class logits [B,C]; in train mode (class logits, the probe's pixel logits [B,C,H/16,W/16] on pool4)."""
        if tuple(x.shape[-2:]) != (CROP, CROP):
            raise ValueError(f"the classifier reads {CROP} x {CROP} images (a 7 x 7 pool5), got {tuple(x.shape[-2:])}")
        pool5, pools = self.backbone(x, return_pools=True)
        x = F.dropout(F.relu(self.fc6(pool5.flatten(1))), 0.5, self.training)
        x = F.dropout(F.relu(self.fc7(x)), 0.5, self.training)
        return (self.fc8(x), self.probe(pools[3])) if self.training else self.fc8(x)


class ResNetClassifier(nn.Module):
    """ResNet-101 at output stride 32 (ImageNet's), global average pooling, fc to the classes."""

    def __init__(self, width: float, num_classes: int):
        super().__init__()
        self.backbone = ResNet101(width, output_stride=32)
        self.fc = nn.Linear(self.backbone.out_channels, num_classes)
        self.probe = nn.Conv2d(scaled(1024, width), num_classes, 1)

    def forward(self, x):
        """Class logits [B,C]; in train mode (class logits, the probe's pixel logits [B,C,H/16,W/16] on layer3)."""
        low = self.backbone.stem(x)
        logits = self.fc(self.backbone.layer4(low).mean((2, 3)))
        return (logits, self.probe(low)) if self.training else logits


CLASSIFIERS = {"vgg16": VGGClassifier, "resnet101": ResNetClassifier}


def presence(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """float [B,C] in {0,1}: which classes cover at least MIN_FRACTION of each mask's valid pixels."""
    out = []
    for mask in masks:
        counts = torch.bincount(mask[mask != 255].flatten(), minlength=num_classes)[:num_classes]
        out.append((counts >= MIN_FRACTION * counts.sum()).float())
    return torch.stack(out)


def classifier_loss(outputs, masks: torch.Tensor) -> torch.Tensor:
    """The stand-in's loss: one sigmoid per class on the image-level labels, plus the probe's pixel labels."""
    logits, probe = outputs
    probe = F.interpolate(probe.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return (F.binary_cross_entropy_with_logits(logits.float(), presence(masks, logits.shape[1]))
            + F.cross_entropy(probe, masks, ignore_index=255))


def _flip(image, mask):
    """Random horizontal flip (ImageNet's training augmentation), drawn from the item's own seed (dlcore.train)."""
    return (image.flip(-1), mask.flip(-1)) if float(torch.rand(())) < 0.5 else (image, mask)


def pretrain(arch: str, *, width: float, steps: int, batch_size: int = 16, lr: float = 0.02, n_images: int = 8192,
             seed: int = 0, device="cpu", checkpoint_dir=None, checkpoint_every: int = 0, progress: bool = True,
             n_check: int = 512) -> dict:
    """Train a `CLASSIFIERS[arch]` on SyntheticScenes' image-level labels through `dlcore.train.train` (SGD, momentum
    0.9, weight decay 5e-4, poly lr, random horizontal flips; checkpoints in `checkpoint_dir`, resumed when one is
    there); returns {"model", "seconds", "loss", "accuracy" (per-label, on `n_check` held-out scenes)}."""
    from dlcore.data import SyntheticScenes
    from dlcore.train import train

    torch.manual_seed(seed)
    scenes = SyntheticScenes("train", n=n_images, size=CROP, seed=PRETRAIN_SEED)
    model = CLASSIFIERS[arch](width, scenes.num_classes)
    resume = checkpoint_dir is not None and (Path(checkpoint_dir) / "last.pt").is_file()
    result = train(model, scenes, steps=steps, batch_size=batch_size, lr=lr, device=device, seed=seed,
                   transform=_flip, loss=classifier_loss, checkpoint_dir=checkpoint_dir,
                   checkpoint_every=checkpoint_every, resume=resume, progress=progress,
                   meta={"pretrain": arch, "n_images": n_images})
    model = model.cpu().eval()
    return {"model": model, "seconds": None if resume else round(result["seconds"], 1), "loss": result["loss"],
            "accuracy": label_accuracy(model, SceneLabels(n_check, split="val"))}


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
