"""dlcore against pydensecrf2 on VOC photographs, and which of the two a float64 lattice agrees with.

Unaries as in crf_voc.py (the ground truth average-pooled by 16, upsampled), DeepLab-LargeFOV settings,
10 iterations, the same unaries for both. For each photograph: label agreement and max |Q - Q_ref|; where
that exceeds --bound, the same mean-field is run with the lattice in float64 (same lattice, same vertices, the
weights and every sum in float64) and both results are compared with it.

    python benchmarks/crf_parity.py                  # every pair under ../shared/peer/voc_samples
    python benchmarks/crf_parity.py --sets labelme   # one folder

The folders: keras-fcn (40 VOC 2012 val pairs; crf_voc.py has used them since issue 5), labelme (3 VOC 2011
photographs, re-drawn labels) and deeplabv3plus-pytorch (14 VOC 2012 val photographs cropped to 513 x 513,
colour labels; 0 and 8 are crops of keras-fcn's 2007_000033 and 2007_000332).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from crf import SETTINGS, pydensecrf_run  # benchmarks/crf.py: the reference call and the LargeFOV settings
from crf_voc import coarse_probs
from dlcore.crf import crf_features, dense_crf
from dlcore.crf.lattice import FusedFilter, PermutohedralLattice
from dlcore.crf.meanfield import PROB_FLOOR, mean_field
from dlcore.data import read_image
from dlcore.data.palette import VOC_PALETTE, read_label_png

PEER = Path(__file__).resolve().parents[2] / "shared" / "peer" / "voc_samples"
SETS = ("keras-fcn", "labelme", "deeplabv3plus-pytorch")


def colour_labels(path: Path) -> np.ndarray:
    """An RGB VOC colour-map PNG -> class indices [H,W] (void's colour (224,224,192) -> 255)."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.array(im.convert("RGB")).astype(np.int64)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    palette = VOC_PALETTE.astype(np.int64)
    lookup = {int((c[0] << 16) | (c[1] << 8) | c[2]): i for i, c in enumerate(palette[:21])}
    lookup[(224 << 16) | (224 << 8) | 192] = 255
    labels = np.full(code.shape, -1, dtype=np.int64)
    for key, index in lookup.items():
        labels[code == key] = index
    if (labels < 0).any():
        raise ValueError(f"{path} has colours outside the VOC colour map")
    return labels


def pairs(root: Path = PEER, sets=SETS):
    """(set, name, image uint8 [H,W,3], labels [H,W]) of every photograph in the chosen folders."""
    for folder in sets:
        base = root / folder
        if folder == "deeplabv3plus-pytorch":
            for image_path in sorted((base / "JPEGImages").glob("*_image.png")):
                stem = image_path.name[: -len("_image.png")]
                yield folder, stem, read_image(image_path).permute(1, 2, 0).numpy(), colour_labels(base / "SegmentationClass" / f"{stem}_target.png")
        else:
            for image_path in sorted((base / "JPEGImages").glob("*.jpg")):
                labels = read_label_png(base / "SegmentationClass" / f"{image_path.stem}.png")
                yield folder, image_path.stem, read_image(image_path).permute(1, 2, 0).numpy(), labels


def float64_mean_field(image: np.ndarray, probs: np.ndarray, settings=SETTINGS, weights64: bool = True) -> np.ndarray:
    """The same mean-field with the lattice's scales and sums in float64 (the vertices as built), and with
    `weights64` the barycentric weights too, recomputed from float64 features.

    The lattice structure (simplex, vertex ids, neighbours) comes from the float32 build that pydensecrf also
    uses; only the arithmetic on it is widened. Without `weights64` the float32 weights stay: the distance to
    that run is the accumulation order's share, the distance between the two runs the float32 weights' share.
    """
    s = settings
    images = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    appearance, smoothness, _ = crf_features(images, s["sigma_alpha"], s["sigma_beta"], s["sigma_gamma"])
    lattices = [PermutohedralLattice(appearance), PermutohedralLattice(smoothness)]
    h, w = probs.shape[1:]
    y, x = np.mgrid[0:h, 0:w]
    xy = torch.from_numpy(np.stack([x, y], -1).reshape(-1, 2)).double()
    rgb = torch.from_numpy(np.ascontiguousarray(image).reshape(-1, 3)).double()
    exact = [torch.cat([xy / s["sigma_alpha"], rgb / s["sigma_beta"]], 1), xy / s["sigma_gamma"]]
    for lattice, features32, features64 in zip(lattices, (appearance, smoothness), exact):
        lattice.barycentric = _barycentric64(features32, features64) if weights64 else lattice.barycentric.double()
    pairwise = _Float64Filter(lattices, [s["w1"], s["w2"]])
    num_labels = probs.shape[0]
    q = torch.from_numpy(probs).double().permute(1, 2, 0).reshape(-1, num_labels)
    unary = -torch.log(q.clamp_min(PROB_FLOOR))
    out = mean_field(unary, pairwise, s["iterations"])
    return out.view(h, w, num_labels).permute(2, 0, 1).numpy()


def _barycentric64(features32: torch.Tensor, features64: torch.Tensor) -> torch.Tensor:
    """The barycentric weights of float64 features, in the simplex the float32 build chose (its rem0 and ranks)."""
    from dlcore.crf.lattice import _elevate, _simplex

    rem0, by_rank, _ = _simplex(_elevate(features32))
    elevated = _elevate(features64)
    d1 = elevated.shape[1]
    delta = ((elevated - rem0.double()) / d1).gather(1, by_rank).flip(1)
    bary = torch.empty_like(delta)
    bary[:, 1:] = delta[:, 1:] - delta[:, :-1]
    bary[:, 0] = delta[:, 0] + (1 - delta[:, d1 - 1])
    return bary


class _Float64Filter:
    """sum_k w_k n_k^-1/2 K_k n_k^-1/2 Q, each lattice filtering in float64 (`PermutohedralLattice.filter`)."""

    def __init__(self, lattices, weights):
        self.lattices, self.weights = lattices, weights
        self.scales = [1.0 / torch.sqrt(lat.filter(torch.ones(lat.num_points, 1, dtype=torch.float64))[:, 0])
                       for lat in lattices]

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        return sum(w * s[:, None] * lat.filter(s[:, None] * q) for lat, w, s in zip(self.lattices, self.weights, self.scales))


def padded_mean_field(image: np.ndarray, probs: np.ndarray, settings=SETTINGS, block: int = 4) -> np.ndarray:
    """dlcore's mean-field on the lattice pydensecrf's SSE build makes: N padded to a multiple of 4 with zero
    feature vectors, whose vertices join the lattice without values (permutohedral.cpp, init, the last block)."""
    s = settings
    images = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    appearance, smoothness, _ = crf_features(images, s["sigma_alpha"], s["sigma_beta"], s["sigma_gamma"])
    n = appearance.shape[0]
    pad = (-n) % block
    real = torch.cat([torch.ones(n), torch.zeros(pad)])
    lattices, pre, post = [], [], []
    for features, w in ((appearance, s["w1"]), (smoothness, s["w2"])):
        lattice = PermutohedralLattice(torch.cat([features, features.new_zeros(pad, features.shape[1])]))
        scale = real / torch.sqrt(lattice.filter(real[:, None])[:, 0] + 1e-20)
        lattices.append(lattice), pre.append(scale), post.append(w * scale)
    num_labels = probs.shape[0]
    q = torch.from_numpy(probs).float().permute(1, 2, 0).reshape(-1, num_labels)
    unary = torch.cat([-torch.log(q.clamp_min(PROB_FLOOR)), torch.zeros(pad, num_labels)])
    out = mean_field(unary, FusedFilter(lattices, pre, post), s["iterations"])[:n]
    return out.view(*probs.shape[1:], num_labels).permute(2, 0, 1).numpy()


def compare_one(image: np.ndarray, labels: np.ndarray, bound: float, with_float64: bool = True) -> dict:
    """Agreement and max |dQ| of dlcore against pydensecrf2 on one photograph; float64 distances past `bound`."""
    probs = coarse_probs(labels)
    ours = dense_crf(image, probs, **SETTINGS)
    ref = pydensecrf_run(image, probs).reshape(probs.shape)
    row = {"pixels": labels.size, "agree": float((ours.argmax(0) == ref.argmax(0)).mean()),
           "max_dq": float(np.abs(ours - ref).max())}
    if with_float64 and row["max_dq"] > bound:
        exact, sums = float64_mean_field(image, probs), float64_mean_field(image, probs, weights64=False)
        row["dlcore_vs_f64"] = float(np.abs(ours - exact).max())
        row["pydensecrf_vs_f64"] = float(np.abs(ref - exact).max())
        row["dlcore_vs_f64_sums"] = float(np.abs(ours - sums).max())
        row["pydensecrf_vs_f64_sums"] = float(np.abs(ref - sums).max())
        row["padded_vs_pydensecrf"] = float(np.abs(padded_mean_field(image, probs) - ref).max())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=PEER)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--bound", type=float, default=1e-3, help="the CRF issue's parity bound on max |dQ|")
    parser.add_argument("--limit", type=int, default=0, help="only the first N photographs of each folder")
    parser.add_argument("--names", nargs="+", default=None, help="only these photographs (file stems)")
    args = parser.parse_args()
    if not args.root.is_dir():
        raise SystemExit(f"{args.root} not found: the VOC samples live beside the checkout, in shared/peer")
    torch.set_num_threads(1)
    rows, seen = [], {}
    for folder, name, image, labels in pairs(args.root, args.sets):
        seen[folder] = seen.get(folder, 0) + 1
        if (args.limit and seen[folder] > args.limit) or (args.names and name not in args.names):
            continue
        row = {"set": folder, "name": name, **compare_one(image, labels, args.bound)}
        rows.append(row)
        extra = (f"\n    to float64 sums (float32 weights): dlcore {row['dlcore_vs_f64_sums']:.1e}, pydensecrf2 "
                 f"{row['pydensecrf_vs_f64_sums']:.1e}; to float64 weights and sums: dlcore {row['dlcore_vs_f64']:.1e}, "
                 f"pydensecrf2 {row['pydensecrf_vs_f64']:.1e}\n    "
                 f"dlcore on pydensecrf's padded lattice to pydensecrf2 {row['padded_vs_pydensecrf']:.1e}"
                 if "dlcore_vs_f64" in row else "")
        print(f"{folder:<22}{name:<14}{100 * row['agree']:8.3f}%  max|dQ| {row['max_dq']:.1e}{extra}", flush=True)
    for folder in args.sets:
        sub = [r for r in rows if r["set"] == folder]
        if sub:
            print(f"{folder}: {len(sub)} photographs, labels equal {100 * np.mean([r['agree'] for r in sub]):.3f}% "
                  f"(worst {100 * min(r['agree'] for r in sub):.3f}%), max |dQ| {max(r['max_dq'] for r in sub):.1e}")
    over = [r for r in rows if r["max_dq"] > args.bound]
    print(f"all: {len(rows)} photographs; max |dQ| > {args.bound:g} on {len(over)}")
    for r in over:
        closer = "dlcore" if r["dlcore_vs_f64_sums"] < r["pydensecrf_vs_f64_sums"] else "pydensecrf2"
        print(f"  {r['set']}/{r['name']}: {closer} is closer to the float64 run of the same lattice")


if __name__ == "__main__":
    main()
