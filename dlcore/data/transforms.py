"""Joint image/label transforms and input normalisation.

Training augmentation as in DeepLab v2 (Sec. 4.1 and the released Caffe prototxts): random scale in
[0.5, 1.5], pad to the crop size (image with the mean colour, label with 255 so padding is ignored by the
loss), random 321 x 321 crop, random horizontal flip. The image and its label go through one
`torchvision.transforms.v2` pipeline with the label wrapped as `tv_tensors.Mask`, so the same random
parameters apply to both and the label is resized with nearest neighbour (class indices are not blended).
"""

from __future__ import annotations

import functools

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

# ImageNet statistics of torchvision's pretrained weights (RGB, on 0..1 values).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The Caffe VGG-16 / ResNet mean used by FCN and DeepLab, in BGR order on 0..255 values.
CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)
# Pad value for images: the ImageNet mean colour in 0..255, so padding looks like "nothing" to the net.
MEAN_RGB_UINT8 = tuple(round(255 * m) for m in IMAGENET_MEAN)

NORMALIZE_MODES = ("imagenet", "caffe")


def normalize(images: torch.Tensor, mode: str = "imagenet") -> torch.Tensor:
    """uint8 [B,3,H,W] or [3,H,W] (RGB, any device) -> float32 of the same shape, ready for the network.

    imagenet: x / 255, minus the ImageNet mean, over the ImageNet std, RGB (torchvision weights).
    caffe: channels reordered to BGR, minus the Caffe mean (104.008, 116.669, 122.675) on 0..255 values, no
        scaling (the published FCN / DeepLab .caffemodels were trained that way).
    """
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"normalize mode must be one of {NORMALIZE_MODES}, got {mode!r}")
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise ValueError(f"normalize takes uint8 images (0..255), got {images.dtype}")
    if images.ndim not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"normalize takes images [3,H,W] or [B,3,H,W], got shape {tuple(images.shape)}")
    x = images.float()
    if mode == "imagenet":
        mean, std = _channel_constants(IMAGENET_MEAN, x.device), _channel_constants(IMAGENET_STD, x.device)
        return (x / 255.0 - mean) / std
    x = x.flip(-3)  # RGB -> BGR
    return x - _channel_constants(CAFFE_MEAN_BGR, x.device)


@functools.lru_cache(maxsize=None)
def _channel_constants(values: tuple, device: torch.device) -> torch.Tensor:
    """[3,1,1] constants, made once per device: a CUDA graph capture (dlcore.inference) may not copy host data."""
    return torch.tensor(values, device=device).view(3, 1, 1)


class JointTransform:
    """(image uint8 [3,H,W], mask int64 [H,W]) -> (uint8 [3,crop,crop], int64 [crop,crop]); see the module doc."""

    def __init__(self, crop: int = 321, scale=(0.5, 1.5), flip: bool = True, fill=MEAN_RGB_UINT8,
                 ignore_index: int = 255):
        if int(crop) < 1:
            raise ValueError(f"crop must be >= 1 pixel, got {crop}")
        lo, hi = (float(s) for s in scale)
        if not 0 < lo <= hi:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
        self.crop, self.scale, self.flip = int(crop), (lo, hi), bool(flip)
        steps = [v2.RandomHorizontalFlip(0.5)] if flip else []
        self.pipeline = v2.Compose([
            # pad_if_needed pads right/bottom up to the crop; the fill is per type: mean colour / void label
            v2.RandomCrop(self.crop, pad_if_needed=True,
                          fill={tv_tensors.Image: list(fill), tv_tensors.Mask: ignore_index}),
            *steps,
        ])

    def __call__(self, image, mask):
        image = tv_tensors.Image(torch.as_tensor(image))
        mask = tv_tensors.Mask(torch.as_tensor(mask))
        if image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in size")
        h, w = image.shape[-2:]
        # One scale factor for both axes (the papers rescale the whole image, keeping its aspect ratio);
        # drawn from torch's global generator so torch.manual_seed makes the pipeline reproducible.
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * float(torch.rand(()))
        size = [max(1, round(h * s)), max(1, round(w * s))]
        image = v2.functional.resize(image, size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
        mask = v2.functional.resize(mask, size, interpolation=v2.InterpolationMode.NEAREST)
        image, mask = self.pipeline(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()

    def __repr__(self):
        return f"train_transform(crop={self.crop}, scale={self.scale}, flip={self.flip})"


def train_transform(crop: int = 321, scale=(0.5, 1.5), flip: bool = True) -> JointTransform:
    """DeepLab's training augmentation: random scale, pad (mean colour / 255), random crop, horizontal flip."""
    return JointTransform(crop=crop, scale=scale, flip=flip)
