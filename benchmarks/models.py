"""Forward images/s of every dlcore model against torchvision's segmentation nets, measured in the same run.

Issue 4 item 7 and issue 6 item 6: at 513 x 513, batch 1 and 16, fp32 and bf16, each dlcore model beside
torchvision's `fcn_resnet101` (the FCN reference) and `deeplabv3_resnet101` (the reference for DeepLab-v2
ResNet-101 ASPP-L); then end to end (normalize, network, bilinear upsampling, softmax, 10 mean-field CRF
iterations, argmax) on 500 x 375 images through `dlcore.inference.Predictor`.

    python benchmarks/models.py --device cuda                 # the full table on a GPU (issue numbers)
    python benchmarks/models.py --device cpu --quick          # what a 2-core CPU can do in minutes

dlcore models run through `Predictor` (channels-last, bf16 autocast, CUDA graphs on a GPU: the GPU model);
the torchvision references run as their users run them (eval, channels-last and autocast on a GPU, eager).
Nothing downloads: the references are built with weights=None, weights_backbone=None. Speed does not depend
on the weights' values, so random initialisation measures the same thing.
"""

import argparse
import statistics

import torch
from torch import nn

import dlcore
from dlcore.inference import Predictor
from dlcore.measure import images_per_second

REFERENCES = {"fcn_resnet101": "torchvision", "deeplabv3_resnet101": "torchvision"}
# Full mode: every model at the sizes. Quick mode (CPU): the three the notebooks discuss plus both
# references, one 257 x 257 image, fp32 only, a 250 x 188 end-to-end image: minutes, not hours, on 2 cores. The
# models take turns (5 rounds of one timed call each, median), so that the load of other jobs on a shared machine
# hits them alike. (bf16 is left out of quick mode: on a CPU without bf16 instructions autocast runs ~100x slower
# than fp32; measured 0.01 images/s for the references on the dev box. Ask for it with --dtype bf16.)
QUICK_MODELS = ["fcn8s", "deeplab-v1-largefov", "deeplab-v2-resnet101-aspp-l"]
QUICK = {"size": 257, "batch": [1], "dtype": ["fp32"], "e2e_size": (188, 250), "e2e_batch": 1, "iters": 1, "warmup": 1,
         "rounds": 5, "e2e_iters": 3}
FULL = {"size": 513, "batch": [1, 16], "dtype": ["fp32", "bf16"], "e2e_size": (375, 500), "e2e_batch": 16,
        "iters": 20, "warmup": 5}
E2E_MODELS = ["deeplab-v1-largefov", "deeplab-v2-resnet101-aspp-l"]


class TorchvisionNet(nn.Module):
    """torchvision's segmentation nets return {'out': logits}; the benchmark wants the tensor."""

    def __init__(self, name: str, num_classes: int):
        super().__init__()
        from torchvision.models import segmentation

        self.net = getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=num_classes)

    def forward(self, x):
        return self.net(x)["out"]


def build(name: str, num_classes: int, width: float) -> nn.Module:
    if name in REFERENCES:
        return TorchvisionNet(name, num_classes)
    from dlcore.models import build_model

    return build_model(name, num_classes=num_classes, width=width)


def forward_fn(name: str, model: nn.Module, device: torch.device, dtype: str, cuda_graphs: bool, compile: bool = False):
    """A callable images uint8 [B,3,H,W] -> scores, on `device`, in `dtype`."""
    cuda = device.type == "cuda"
    if name not in REFERENCES:
        if not cuda:  # the Predictor keeps CPU runs fp32; CPU bf16 is the benchmark's own autocast
            probs = Predictor(model, device=device, crf=False).probs
            return _cpu_autocast(probs) if dtype == "bf16" else probs
        return Predictor(model, device=device, crf=False, bf16=dtype == "bf16", cuda_graphs=cuda_graphs,
                         compile=compile).probs
    from dlcore.data.transforms import normalize

    model = model.to(device).eval()
    if cuda:
        model = model.to(memory_format=torch.channels_last)

    def run(images):
        x = normalize(images, mode="imagenet")
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            return model(x)
    return run


def _cpu_autocast(fn):
    def run(images):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn(images)
    return run


def random_images(batch: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=g).to(device)


def photo_batch(batch: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """benchmarks/crf.py's photograph (grace_hopper.jpg) at height x width, mirrored in every other slot."""
    from crf import photo  # benchmarks/crf.py, beside this script

    one = torch.from_numpy(photo(height, width)).permute(2, 0, 1)
    return torch.stack([one if i % 2 == 0 else one.flip(-1) for i in range(batch)]).to(device)


def forward_table(args, preset) -> list[dict]:
    """One row per (model, dtype, batch). rounds == 1: each model built, timed and freed in turn. rounds > 1
    (quick mode): every model is kept and the models take turns, `iters` calls each per round, and a row is the
    median over the rounds, so that load from other jobs on a shared machine hits every model alike."""
    names = args.models + [r for r in REFERENCES if r not in args.models]
    dtypes, batches = args.dtype or preset["dtype"], args.batch or preset["batch"]
    if preset.get("rounds", 1) == 1:
        rows = []
        for name in names:
            model = build(name, args.num_classes, args.width)
            rows += _measure({name: model}, args, preset, dtypes, batches)
            del model
        return rows
    models = {name: build(name, args.num_classes, args.width) for name in names}
    return _measure(models, args, preset, dtypes, batches)


def _measure(models: dict, args, preset, dtypes, batches) -> list[dict]:
    rows = []
    for dtype in dtypes:
        fns = {name: forward_fn(name, m, args.device, dtype, args.cuda_graphs, args.compile)
               for name, m in models.items()}
        for batch in batches:
            images = random_images(batch, preset["size"], preset["size"], args.device)
            for fn in fns.values():
                images_per_second(fn, images, 1, preset["warmup"])  # warm-up (the one timed call is discarded)
            runs = {name: [] for name in fns}
            for _ in range(preset.get("rounds", 1)):
                for name, fn in fns.items():
                    runs[name].append(images_per_second(fn, images, preset["iters"], 0))
            for name, ips in runs.items():
                ips = statistics.median(ips)
                rows.append({"model": name, "dtype": dtype, "batch": batch, "size": preset["size"], "ips": ips})
                print(f"{name:<34}{dtype:>6}{batch:>4}  {ips:9.2f} images/s", flush=True)
    return rows


def e2e_table(args, preset) -> list[dict]:
    rows = []
    height, width = preset["e2e_size"]
    batch = preset["e2e_batch"]
    for name in args.e2e_models:
        model = build(name, args.num_classes, args.width)
        predictor = Predictor(model, device=args.device, crf={"iterations": 10}, cuda_graphs=args.cuda_graphs,
                              compile=args.compile)
        # a photograph, not noise: on uniform random pixels every pixel is its own colour and the CRF's lattice
        # has many times the vertices of a real image's (measured on the H100: 84 against 208 images/s end to end)
        images = photo_batch(batch, height, width, args.device)
        ips = images_per_second(predictor, images, preset.get("e2e_iters", preset["iters"]), preset["warmup"])
        rows.append({"model": name, "batch": batch, "size": f"{width}x{height}", "ips": ips})
        print(f"end to end {name:<34}{batch:>4}  {ips:9.2f} images/s", flush=True)
    return rows


def markdown(forward_rows, e2e_rows) -> str:
    ref = {(r["dtype"], r["batch"]): r["ips"] for r in forward_rows if r["model"] == "fcn_resnet101"}
    v3 = {(r["dtype"], r["batch"]): r["ips"] for r in forward_rows if r["model"] == "deeplabv3_resnet101"}
    lines = ["| model | dtype | batch | size | images/s | x fcn_resnet101 | x deeplabv3_resnet101 |",
             "|---|---|---|---|---|---|---|"]
    for r in forward_rows:
        key = (r["dtype"], r["batch"])
        lines.append(f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['size']} | {r['ips']:.2f} "
                     f"| {r['ips'] / ref[key]:.2f} | {r['ips'] / v3[key]:.2f} |")
    if e2e_rows:
        lines += ["", "| end to end (network + upsampling + CRF 10 it.) | batch | image | images/s |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['batch']} | {r['size']} | {r['ips']:.2f} |" for r in e2e_rows]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--models", default=None,
                   help="comma-separated dlcore model names (default: all of dlcore.models.available(); "
                        "--quick: " + ",".join(QUICK_MODELS) + ")")
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes (default 1 16; --quick: 1)")
    p.add_argument("--dtype", nargs="+", choices=["fp32", "bf16"], help="default fp32 bf16; --quick: fp32")
    p.add_argument("--e2e-models", default=",".join(E2E_MODELS), help="models for the end-to-end rows ('' for none)")
    p.add_argument("--width", type=float, default=1.0, help="channel width of the dlcore models (1.0 = the papers')")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="run the dlcore models eagerly on a GPU (CUDA graphs are on by default there)")
    p.add_argument("--iters", type=int, default=None,
                   help="timed calls per row and round (default 20; --quick: 1)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds in which the models take turns, median reported (default 1; --quick: 5)")
    p.add_argument("--e2e-only", action="store_true", help="only the end-to-end rows")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the dlcore models (CUDA; compilation happens in the warm-up calls)")
    p.add_argument("--quick", action="store_true", help="CPU mode: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    args = p.parse_args(argv)
    args.device = dlcore.resolve_device(args.device)
    args.cuda_graphs = args.cuda_graphs and args.device.type == "cuda"
    if args.compile and args.device.type != "cuda":
        raise SystemExit("--compile needs --device cuda (the Predictor compiles on CUDA only)")
    if args.models is None:
        from dlcore.models import available

        args.models = QUICK_MODELS if args.quick else list(available())
    else:
        args.models = [m for m in args.models.split(",") if m]
    args.e2e_models = [m for m in args.e2e_models.split(",") if m]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # cuDNN autotuning for every model alike (the dlcore Predictor turns it on; the references get it too)
    torch.backends.cudnn.benchmark = args.device.type == "cuda"
    preset = dict(QUICK if args.quick else FULL)
    if args.iters is not None:
        if args.iters < 1:
            raise SystemExit("--iters must be >= 1")
        preset["iters"] = args.iters
    if args.rounds is not None:
        if args.rounds < 1:
            raise SystemExit("--rounds must be >= 1")
        preset["rounds"] = args.rounds
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, preset "
          f"{'quick' if args.quick else 'full'}, cuda graphs {args.cuda_graphs}", flush=True)
    forward_rows = [] if args.e2e_only else forward_table(args, preset)
    e2e_rows = e2e_table(args, preset)
    print()
    print(markdown(forward_rows, e2e_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
