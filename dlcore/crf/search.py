"""Cross-validating the CRF's appearance kernel on held-out images (DeepLab v1 Sec. 5, v2 Sec. 4.1).

The papers fix the smoothness kernel (w2 = 3, sigma_gamma = 3) and search w1, sigma_alpha and sigma_beta on
a small held-out subset of VOC 2012 val (100 images), coarse to fine. `crf_search` runs the network once per
image and refines the cached probabilities with every setting of the grid.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from dlcore.crf import DenseCRF
from dlcore.crf.defaults import DEFAULTS
from dlcore.metrics import ConfusionMatrix

__all__ = ["heldout_indices", "crf_search", "format_crf_search"]


def heldout_indices(n_total: int, n_heldout: int) -> list[int]:
    """n_heldout indices spread evenly over the dataset (deterministic, so a search can be repeated)."""
    if n_heldout < 1:
        raise ValueError(f"n_heldout must be >= 1, got {n_heldout}")
    n = min(n_heldout, n_total)
    return sorted({int(i) for i in np.linspace(0, n_total - 1, n).round()})


def crf_search(predictor, dataset, *, n_heldout: int = 100, w1=(3, 4, 5), sigma_alpha=(30, 50, 80, 121),
               sigma_beta=(3, 5, 10), w2: float = DEFAULTS["w2"], sigma_gamma: float = DEFAULTS["sigma_gamma"],
               iterations: int = DEFAULTS["iterations"], progress: bool = True) -> dict:
    """Cross-validate the CRF's appearance kernel on held-out images of `dataset`.

    predictor: the network's test-time path without a CRF, `dlcore.inference.Predictor(model, crf=False, ...)`
    (its device and input normalization are the search's). Each (w1, sigma_alpha, sigma_beta) in the grid
    refines the cached probabilities with w2 and sigma_gamma fixed. Returns {"rows": [{w1, sigma_alpha,
    sigma_beta, miou}, ...], "best": the best row, "no_crf": mIoU of the network alone, "images": number of
    held-out images, "w2", "sigma_gamma", "iterations"}.
    """
    from tqdm.auto import tqdm

    if getattr(predictor, "crf", None) is not None:
        raise ValueError("crf_search refines the network's own probabilities: build the Predictor with crf=False")
    grid = list(itertools.product(w1, sigma_alpha, sigma_beta))
    if not grid:
        raise ValueError("the CRF grid is empty: give at least one value each for w1, sigma_alpha, sigma_beta")
    cms = [ConfusionMatrix(dataset.num_classes) for _ in grid]
    plain = ConfusionMatrix(dataset.num_classes)
    crfs = [DenseCRF(iterations, w1=a, sigma_alpha=b, sigma_beta=c, w2=w2, sigma_gamma=sigma_gamma).to(predictor.device)
            for a, b, c in grid]
    indices = heldout_indices(len(dataset), n_heldout)
    for i in tqdm(indices, desc="crf-search", disable=not progress):
        image, target = dataset[i]
        images = torch.as_tensor(image)[None].to(predictor.device)
        probs = predictor.probs(images)
        plain.update(probs[0].argmax(0).cpu(), target)
        with torch.inference_mode():
            for crf, cm in zip(crfs, cms):
                cm.update(crf(images, probs)[0].argmax(0).cpu(), target)
    rows = [dict(w1=a, sigma_alpha=b, sigma_beta=c, miou=cm.scores()["miou"]) for (a, b, c), cm in zip(grid, cms)]
    best = max(rows, key=lambda r: r["miou"])
    return {"rows": rows, "best": best, "no_crf": plain.scores()["miou"], "images": len(indices),
            "w2": w2, "sigma_gamma": sigma_gamma, "iterations": iterations}


def format_crf_search(result: dict) -> str:
    """The search as a table (mIoU %), best row marked, and the best setting in one line."""
    lines = [f"CRF search on {result['images']} held-out images (w2 = {result['w2']:g}, sigma_gamma = "
             f"{result['sigma_gamma']:g}, {result['iterations']} iterations); network alone: "
             f"{100 * result['no_crf']:.2f}% mIoU", "",
             "| w1 | sigma_alpha | sigma_beta | mIoU |", "| --- | --- | --- | --- |"]
    for r in result["rows"]:
        mark = " **best**" if r is result["best"] else ""
        lines.append(f"| {r['w1']:g} | {r['sigma_alpha']:g} | {r['sigma_beta']:g} | {100 * r['miou']:.2f}{mark} |")
    b = result["best"]
    lines += ["", f"best: w1={b['w1']:g} sigma_alpha={b['sigma_alpha']:g} sigma_beta={b['sigma_beta']:g} "
                  f"w2={result['w2']:g} sigma_gamma={result['sigma_gamma']:g} -> {100 * b['miou']:.2f}% mIoU "
                  f"({100 * (b['miou'] - result['no_crf']):+.2f} over the network alone)"]
    return "\n".join(lines)
