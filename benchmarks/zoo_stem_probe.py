"""How much the zoo's frozen stems know: a linear probe (one 1x1 convolution) trained on each frozen stem's output.

    python benchmarks/zoo_stem_probe.py [--steps 600] [--n 1000] [--select 128]

A probe of ResNet-101's slow learning (issue 21, item 5). Every zoo network trains on top of a frozen stem: VGG-16
up to pool4, ResNet-101 up to layer3. If the head learns slowly on one of them, the first question is what that
stem's output already separates. Here the same linear probe, the same steps, scenes and optimiser, reads:
- VGG-16's pool4 as DeepLab uses it (dense, stride 8: the pre-training's own weights, its pools at stride 1);
- ResNet-101's layer3 at output stride 8 (dilated to rate 2: not the geometry it was pre-trained with) and at 16
  (layer3 as pre-trained).
Mean IoU (no CRF) on the selection scenes, SyntheticScenes("val", seed=0)[0:select]; one thread.
`benchmarks/zoo_pretrain_study.py` runs the same probe on other pre-trainings.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

STEMS = {"VGG-16 pool4 (dense, stride 8)": ("deeplab-v1-largefov", {"batch_norm": True}, "vgg16"),
         "ResNet-101 layer3, output stride 8": ("deeplab-v2-resnet101-largefov", {"output_stride": 8}, "resnet101"),
         "ResNet-101 layer3, output stride 16": ("deeplab-v2-resnet101-largefov", {"output_stride": 16}, "resnet101")}


def probe(name: str, options: dict, pretrained: dict, *, steps: int, n: int, select: int) -> tuple[float, int, float]:
    """(mean IoU %, channels, seconds) of a linear probe trained `steps` steps on the frozen stem of zoo-width model
    `name` started from the classifier state `pretrained`."""
    from dlcore.data.transforms import normalize
    from dlcore.metrics import scores_from_confusion
    from dlcore.models import build_model
    from dlcore.zoo import FULL, WIDTH, image_confusions, memo, scenes, start_from_pretrained

    train, sel = scenes(FULL, "train", n), scenes(FULL, "val", select)
    torch.manual_seed(0)
    model = build_model(name, num_classes=11, width=WIDTH, **options)
    start_from_pretrained(model, pretrained)
    memo.attach(model)

    def features(images):
        out = model.backbone.stem_memo(model.backbone.stem, normalize(images))
        return out[0] if isinstance(out, tuple) else out

    channels = features(train["images"][:1]).shape[1]
    linear = torch.nn.Conv2d(channels, 11, 1)
    optimizer = torch.optim.SGD(linear.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, n, (8,), generator=g)
        logits = F.interpolate(linear(features(train["images"][idx])), size=train["masks"].shape[-2:],
                               mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, train["masks"][idx], ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = F.interpolate(linear(features(sel["images"])), size=sel["masks"].shape[-2:], mode="bilinear",
                               align_corners=False)
    cm = image_confusions(logits.argmax(1).numpy(), sel["masks"].numpy(), 11).sum(0)
    return 100 * float(scores_from_confusion(cm)["miou"]), channels, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--n", type=int, default=1000, help="training scenes")
    p.add_argument("--select", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(1)
    from dlcore.zoo import ZOO_DIR, load_entry

    print(f"linear probe on each frozen stem: {args.steps} steps of 8 scenes from {args.n}, lr 0.1; "
          f"mean IoU on {args.select} selection scenes")
    for label, (name, options, trunk) in STEMS.items():
        miou, channels, seconds = probe(name, options, load_entry(f"pretrain-{trunk}", ZOO_DIR), steps=args.steps,
                                        n=args.n, select=args.select)
        print(f"{label:<40} {miou:5.1f}% mean IoU  ({channels} channels, {seconds:.0f} s)")


if __name__ == "__main__":
    main()
