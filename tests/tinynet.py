"""Tiny stand-ins for a dlcore model and dataset, shared by the training and inference tests: a 2-layer net and
an in-memory dataset of 16 x 16 px, so the tests run in seconds on a shared CPU."""

import torch
import torch.nn.functional as F
from torch import nn


class TinyNet(nn.Module):
    """conv-relu-dropout + 1x1 classifier: what train and evaluate need of a dlcore model; dropout tests the RNG restore."""

    name = "tiny"
    output_stride = 1

    def __init__(self, num_classes=3, width=1.0, dropout=0.3):
        super().__init__()
        self.num_classes, self.width, self.options = num_classes, width, {"dropout": dropout}
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Dropout2d(dropout))
        self.classifier = nn.Conv2d(6, num_classes, 1)

    def classifier_parameters(self):
        return list(self.classifier.parameters())

    def forward(self, x):
        return self.classifier(self.features(x))


class TinyScenes(torch.utils.data.Dataset):
    """Random labels 0..2 drawn as red, green or blue pixels (the label's channel bright, the others dark), with a
    void (255) top row, as VOC's void band."""

    num_classes = 3
    class_names = ["red", "green", "blue"]

    def __init__(self, n=8, size=16, seed=0):
        self.n, self.size, self.seed = n, size, seed

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(1000 * self.seed + i)
        mask = torch.randint(0, 3, (self.size, self.size), generator=g)
        dark = torch.randint(0, 100, (3, self.size, self.size), generator=g)
        bright = torch.randint(150, 256, (3, self.size, self.size), generator=g)
        image = torch.where(F.one_hot(mask, 3).permute(2, 0, 1).bool(), bright, dark).to(torch.uint8)
        mask[0] = 255
        return image, mask


def fresh_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return TinyNet(**kwargs)


def assert_same_weights(a: nn.Module, b: nn.Module):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
