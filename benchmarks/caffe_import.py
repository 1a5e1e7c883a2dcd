"""Caffe import speed (issue 7): a full-size DeepLab-v2 ResNet-101 ASPP-L caffemodel read and mapped in < 20 s.

The published file (train_iter_20000.caffemodel, about 170 MB) cannot be downloaded here, so this writes one
with the same layers, names and shapes (random values) to a temporary folder with `dlcore.caffe.write_caffemodel`,
then times `read_caffemodel` (wire-format parse) and `import_caffe` (every shape checked, copied into the model).

    OMP_NUM_THREADS=2 python benchmarks/caffe_import.py [--repeats 3] [--msc-copies]

It also times the whole `import-caffe` command (full-width model build, read, map, checkpoint write).

--msc-copies also writes the two shared-weight copies per layer that an MSC training snapshot holds
("conv1_res075", "conv1_res05", ...): a file three times the size, as some released snapshots are.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from dlcore.cli import main as dlcore_cli
from dlcore.models import build_model
from dlcore.caffe import export_caffe, import_caffe, read_caffemodel, write_caffemodel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deeplab-v2-resnet101-aspp-l-msc")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--msc-copies", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(args.model)
    layers = export_caffe(model, scale_factor=999.98)
    if args.msc_copies:
        layers += [(f"{n}_{s}", t, b) for n, t, b in list(layers) for s in ("res075", "res05")]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train_iter_20000.caffemodel"
        write_caffemodel(path, layers)
        del layers
        size = path.stat().st_size
        print(f"{args.model}: {path.name} {size / 1e6:.1f} MB, {torch.get_num_threads()} torch threads")
        times = []
        for _ in range(args.repeats):
            target = build_model(args.model)
            start = time.perf_counter()
            blobs = read_caffemodel(path)
            read = time.perf_counter() - start
            report = import_caffe(target, blobs)
            total = time.perf_counter() - start
            times.append(total)
            print(f"  read {read:.2f} s + map {total - read:.2f} s = {total:.2f} s "
                  f"({report['layers']} layers, {report['parameters'] / 1e6:.1f}M values)")
            del blobs
        ok = all(torch.allclose(a.float(), b.float(), rtol=1e-6, atol=0)
                 for a, b in zip(model.state_dict().values(), target.state_dict().values()))
        print(f"best {min(times):.2f} s, median {sorted(times)[len(times) // 2]:.2f} s (target < 20 s); "
              f"imported weights equal the written ones: {ok}")
        # The whole command a user runs: build the full-width model, read, map, write the checkpoint.
        start = time.perf_counter()
        code = dlcore_cli(["import-caffe", str(path), "--model", args.model, "--out", str(Path(tmp) / "out.pt")])
        print(f"python -m dlcore import-caffe (in-process, model build + checkpoint write included): "
              f"{time.perf_counter() - start:.2f} s, exit code {code}")


if __name__ == "__main__":
    main()
