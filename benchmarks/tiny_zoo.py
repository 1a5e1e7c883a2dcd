"""What a smoke run's tiny zoo costs: `train_all` of the given models on the tiny schedule, in a fresh folder.

    python benchmarks/tiny_zoo.py [MODEL ...]      (default: deeplab-v2-resnet101-largefov)

Every notebook's smoke run trains such a zoo (`zoo.for_notebook(smoke=True)`), its classifiers' pre-training
included. Prints the seconds; run each side of a change twice on the same machine, under the same load.
"""

import shutil
import sys
import tempfile
import time
from pathlib import Path

from dlcore.zoo import TINY, train_all
from dlcore.zoo.evidence import claim_schedule


def main(models: list[str]) -> float:
    folder = Path(tempfile.mkdtemp(prefix="dlcore-tiny-zoo-"))
    claim_schedule(folder, TINY)
    try:
        start = time.perf_counter()
        train_all(models, force=True, zoo_dir=folder, progress=False, log=lambda *_: None)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    print(f"{main(sys.argv[1:] or ['deeplab-v2-resnet101-largefov']):.1f} s")
