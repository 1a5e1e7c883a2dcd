"""How much the zoo's frozen stems know: a linear probe (one 1x1 convolution) trained on each frozen stem's output.

    python benchmarks/zoo_stem_probe.py [--steps 600] [--n 1000] [--select 128]

A probe of ResNet-101's slow learning (issue 21, item 5). Every zoo network trains on top of a frozen stem: VGG-16
up to pool4, ResNet-101 up to layer3. If the head learns slowly on one of them, the first question is what that
stem's output already separates. Here the same linear probe, the same steps, scenes and optimiser, reads:
- VGG-16's pool4 as DeepLab uses it (dense, stride 8: the pre-training's own weights, its pools at stride 1);
- ResNet-101's layer3 at output stride 8 (dilated to rate 2: not the geometry it was pre-trained with) and at 16
  (layer3 as pre-trained).
Mean IoU (no CRF) on the selection scenes, SyntheticScenes("val", seed=0)[0:select]; one thread.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--n", type=int, default=1000, help="training scenes")
    p.add_argument("--select", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(1)

    from dlcore.data.transforms import normalize
    from dlcore.metrics import scores_from_confusion
    from dlcore.models import build_model
    from dlcore.zoo import FULL, WIDTH, ZOO_DIR, image_confusions, load_entry, memo, scenes, start_from_pretrained

    train, sel = scenes(FULL, "train", args.n), scenes(FULL, "val", args.select)
    stems = {"VGG-16 pool4 (dense, stride 8)": ("deeplab-v1-largefov", {"batch_norm": True}, "vgg16"),
             "ResNet-101 layer3, output stride 8": ("deeplab-v2-resnet101-largefov", {"output_stride": 8}, "resnet101"),
             "ResNet-101 layer3, output stride 16": ("deeplab-v2-resnet101-largefov", {"output_stride": 16}, "resnet101")}
    print(f"linear probe on each frozen stem: {args.steps} steps of 8 scenes from {args.n}, lr 0.1; "
          f"mean IoU on {args.select} selection scenes")
    for label, (name, options, trunk) in stems.items():
        torch.manual_seed(0)
        model = build_model(name, num_classes=11, width=WIDTH, **options)
        start_from_pretrained(model, load_entry(f"pretrain-{trunk}", ZOO_DIR))
        memo.attach(model)

        def features(images):
            out = model.backbone.stem_memo(model.backbone.stem, normalize(images))
            return out[0] if isinstance(out, tuple) else out

        channels = features(train["images"][:1]).shape[1]
        probe = torch.nn.Conv2d(channels, 11, 1)
        optimizer = torch.optim.SGD(probe.parameters(), lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for step in range(args.steps):
            idx = torch.randint(0, args.n, (8,), generator=g)
            logits = F.interpolate(probe(features(train["images"][idx])), size=train["masks"].shape[-2:],
                                   mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, train["masks"][idx], ignore_index=255)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            logits = F.interpolate(probe(features(sel["images"])), size=sel["masks"].shape[-2:], mode="bilinear",
                                   align_corners=False)
        cm = image_confusions(logits.argmax(1).numpy(), sel["masks"].numpy(), 11).sum(0)
        print(f"{label:<40} {100 * float(scores_from_confusion(cm)['miou']):5.1f}% mean IoU  "
              f"({channels} channels, {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
