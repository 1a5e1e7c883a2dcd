"""Does the CRF search's choice on 32 held-out scenes hold on more scenes?

    python benchmarks/crf_selection.py [--model deeplab-v1-largefov] [--zoo-dir zoo-next] [--scenes 128] [--top 8]

The zoo cross-validates w1, sigma_alpha and sigma_beta on the schedule's first 32 held-out scenes
(`zoo.training.crf_search`). This scores settings of that search again, for seed 0's model, on the next --scenes
held-out scenes (the same selection draw, scenes the search did not read; never the test draw): the search's --top
best settings and --top more spread evenly over the rest of its ranking. It prints each setting's score on both sets,
the rank correlation, and how far the 32-scene choice lies from the best on the larger set; the numbers go to
benchmarks/crf_selection.json (one key per model).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _ranks(values) -> np.ndarray:
    order = np.argsort(values)
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    return ranks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deeplab-v1-largefov")
    p.add_argument("--zoo-dir", type=Path, default=Path("zoo-next"))
    p.add_argument("--scenes", type=int, default=128)
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("crf_selection.json"))
    args = p.parse_args()

    from dlcore.metrics import scores_from_confusion
    from dlcore.zoo import MODELS, read_manifest, schedule_of
    from dlcore.zoo.training import score_crf_settings, image_confusions
    from dlcore.zoo.trunk import labels_of, load, probabilities, scenes

    record = read_manifest(args.zoo_dir)["crf"][args.model]
    ranked = sorted(record["grid"], key=record["grid"].get, reverse=True)
    rest = ranked[args.top:]
    spread = [rest[int(i)] for i in np.linspace(0, len(rest) - 1, min(args.top, len(rest)))]
    chosen = ranked[:args.top] + spread
    schedule = schedule_of(args.zoo_dir)
    searched = schedule.value(MODELS[args.model], "n_heldout")
    data = scenes(schedule, "val", args.scenes, offset=schedule.heldout_offset + searched)
    model = load(args.model, 0, args.zoo_dir)
    probs = probabilities(model, data)
    masks = data["masks"].numpy()

    def miou(labels) -> float:
        return round(100 * float(scores_from_confusion(image_confusions(labels, masks, model.num_classes).sum(0))["miou"]), 2)

    started = time.perf_counter()
    scored = score_crf_settings(chosen, data, probs, model.num_classes, "CRF settings", progress=False)
    larger = {k: round(100 * v, 2) for k, v in scored.items()}
    small = [100 * record["grid"][k] for k in chosen]
    big = [larger[k] for k in chosen]
    rho = float(np.corrcoef(_ranks(small), _ranks(big))[0, 1])
    best_big = max(chosen, key=larger.get)
    result = {"model": args.model, "searched_scenes": searched, "scenes": args.scenes,
              "offset": schedule.heldout_offset + searched, "without_crf": miou(labels_of(probs)),
              "settings": {k: {"searched": round(s, 2), "larger": b} for k, s, b in zip(chosen, small, big)},
              "spearman": round(rho, 3), "choice": ranked[0], "best_on_larger": best_big,
              "choice_behind_best": round(larger[best_big] - larger[ranked[0]], 2),
              "seconds": round(time.perf_counter() - started)}
    print(f"{args.model}: w1/sigma_alpha/sigma_beta, mean IoU on the {searched} searched held-out scenes and on the "
          f"next {args.scenes} (no CRF there: {result['without_crf']})")
    for k, s, b in zip(chosen, small, big):
        print(f"  {k:<18}{s:>8.2f}{b:>8.2f}" + ("   <- the search's choice" if k == ranked[0] else ""))
    print(f"rank correlation {rho:.2f}; the choice is {result['choice_behind_best']:.2f} points behind the best "
          f"on the larger set ({best_big}); {result['seconds']} s")
    out = json.loads(args.out.read_text()) if args.out.exists() else {}
    out[args.model] = result
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
