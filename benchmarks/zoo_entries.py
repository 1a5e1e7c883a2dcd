"""The converged zoo entry by entry, as `benchmarks/RESULTS.md` records it: a markdown table from the manifest.

    python benchmarks/zoo_entries.py [ZOO_DIR]      (default: zoo-next)

Per finished model entry: its training seconds (one thread, as `zoo train` recorded them), its held-out mean IoU
(fp32, the storage check's scenes), the end of its held-out learning curve and what the curve's last quarter added,
and its mean IoU on the zoo's test scenes from the score records, without and with the model's CRF.
"""

import sys
from pathlib import Path

from dlcore import zoo
from dlcore.zoo.recipe import ROOT


def rows(zoo_dir: Path) -> list[str]:
    entries = zoo.read_manifest(zoo_dir)["entries"]
    out = ["| entry | training (s) | held-out, fp32 | curve end | its last quarter | test | test + CRF |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for entry, info in sorted(entries.items()):
        if info["kind"] != "model":
            continue
        record = zoo.recorded(info["model"], info["seed"], zoo_dir)
        crf = f"{zoo.miou(record['crf']):.1f}" if "crf" in record else "-"
        out.append(f"| {entry} | {info['train_seconds']:,.0f} | {info['heldout_miou_fp32']:.2f} | {info['curve'][-1][1]:.1f} "
                   f"| {zoo.last_quarter_gain(info['curve']):+.1f} | {zoo.miou(record['none']):.1f} | {crf} |")
    return out


if __name__ == "__main__":
    print("\n".join(rows(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "zoo-next")))
