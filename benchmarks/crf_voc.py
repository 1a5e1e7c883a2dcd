"""The CRF on real photographs: PASCAL VOC 2012 val pairs, a coarse DCNN-like map, dlcore against pydensecrf2.

DeepLab's argument (v1 Sec. 4, Fig. 5) is that a coarse score map loses the object boundaries and the dense CRF
brings them back from the image. To check it without a trained network, the "DCNN" here is the ground truth made
coarse: one-hot labels average-pooled by 16 (a stride-16 score map) and upsampled bilinearly, as DeepLab upsamples
its scores. Both CRFs get exactly the same unaries, so the run also measures parity and speed on real photographs.

    python benchmarks/crf_voc.py                 # the 40 pairs in ../shared/peer/voc_samples/keras-fcn
    python benchmarks/crf_voc.py --limit 5       # a quick look

Needs the peer folder beside the checkout (it is not part of the project); pydensecrf2 is optional.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dlcore import metrics
from crf import SETTINGS, pydensecrf_run  # benchmarks/crf.py: the same reference call and settings
from dlcore.crf import dense_crf
from dlcore.data import read_image
from dlcore.data.palette import read_label_png

VOC = Path(__file__).resolve().parents[2] / "shared" / "peer" / "voc_samples" / "keras-fcn"
NUM_CLASSES = 21


def coarse_probs(labels: np.ndarray, stride: int = 16) -> np.ndarray:
    """Softmax-like [L,H,W]: one-hot labels (void spread uniformly) average-pooled by `stride`, upsampled bilinearly."""
    t = torch.from_numpy(labels).long()
    one_hot = F.one_hot(t.clamp_max(NUM_CLASSES - 1), NUM_CLASSES).permute(2, 0, 1).float()
    one_hot[:, t == 255] = 1.0 / NUM_CLASSES
    pooled = F.avg_pool2d(one_hot[None], stride, stride, ceil_mode=True)
    probs = F.interpolate(pooled, size=labels.shape, mode="bilinear", align_corners=False)[0]
    probs = probs.clamp_min(1e-4)
    return (probs / probs.sum(0, keepdim=True)).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=VOC, help="folder with JPEGImages/, SegmentationClass/, val_ids.txt")
    parser.add_argument("--limit", type=int, default=0, help="only the first N pairs")
    parser.add_argument("--band", type=int, default=5, help="trimap width in pixels")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.root.is_dir():
        raise SystemExit(f"{args.root} not found: this benchmark reads the VOC val samples beside the checkout")
    torch.set_num_threads(args.threads)
    try:
        import pydensecrf.densecrf  # noqa: F401
        have_ref = True
    except ImportError:
        have_ref = False
    ids = (args.root / "val_ids.txt").read_text().split()
    ids = ids[: args.limit] if args.limit else ids
    params = SETTINGS  # DeepLab-LargeFOV's, as benchmarks/crf.py
    preds = {"coarse": [], "dlcore": [], "pydensecrf2": []}
    targets, seconds, max_diff, agree = [], {"dlcore": 0.0, "pydensecrf2": 0.0}, 0.0, []
    for name in ids:
        image = read_image(args.root / "JPEGImages" / f"{name}.jpg").permute(1, 2, 0).numpy()
        labels = read_label_png(args.root / "SegmentationClass" / f"{name}.png")
        probs = coarse_probs(labels)
        start = time.perf_counter()
        q = dense_crf(image, probs, **params)
        seconds["dlcore"] += time.perf_counter() - start
        targets.append(labels)
        preds["coarse"].append(probs.argmax(0))
        preds["dlcore"].append(q.argmax(0))
        if have_ref:
            start = time.perf_counter()
            ref = pydensecrf_run(image, probs).reshape(probs.shape)
            seconds["pydensecrf2"] += time.perf_counter() - start
            preds["pydensecrf2"].append(ref.argmax(0))
            max_diff = max(max_diff, float(np.abs(q - ref).max()))
            agree.append(float((q.argmax(0) == ref.argmax(0)).mean()))
    print(f"{len(ids)} VOC 2012 val photographs; CRF {params}; coarse map: ground truth average-pooled by 16")
    print(f"{'labels':<14}{'mIoU':>8}{f'IoU in {args.band} px band':>22}")
    for key, pred in preds.items():
        if not pred:
            continue
        cm = sum(metrics.confusion_matrix(p, t, NUM_CLASSES) for p, t in zip(pred, targets))
        miou = metrics.scores_from_confusion(cm)["miou"]
        # one confusion matrix over all images, inside the band (trimap_miou does the same per batch of equal size)
        bands = [metrics.boundary_band(t, args.band) for t in targets]
        band_cm = sum(metrics.confusion_matrix(np.where(b, p, 255), np.where(b, t, 255), NUM_CLASSES)
                      for p, t, b in zip(pred, targets, bands))
        band = metrics.scores_from_confusion(band_cm)["miou"]
        print(f"{key:<14}{100 * miou:>7.1f}%{100 * band:>21.1f}%")
    print(f"dlcore: {1000 * seconds['dlcore'] / len(ids):.0f} ms/image ({torch.get_num_threads()} threads)")
    if have_ref:
        print(f"pydensecrf2: {1000 * seconds['pydensecrf2'] / len(ids):.0f} ms/image (1 thread); "
              f"ratio dlcore/pydensecrf2 = {seconds['dlcore'] / seconds['pydensecrf2']:.2f}x")
        print(f"parity: max |Q - Q_ref| = {max_diff:.1e}; equal labels {100 * np.mean(agree):.3f}% (mean over images), "
              f"worst image {100 * min(agree):.3f}%")


if __name__ == "__main__":
    main()
