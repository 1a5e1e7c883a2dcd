"""`python -m dlcore crf-search --model NAME --checkpoint CKPT ...`: `dlcore.crf.search.crf_search` from the shell."""

from __future__ import annotations

import itertools

from dlcore.checkpoint import check_num_classes, checkpoint_normalize, load_checkpoint, load_model
from dlcore.cli.common import (MAX_SIDE, add_run_arguments, check_device, check_flags, check_scoring_memory, guarded,
                               open_dataset)
from dlcore.crf import DEFAULTS, DenseCRF
from dlcore.crf.search import crf_search, format_crf_search
from dlcore.inference import Predictor


def add_crf_search_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model name the checkpoint is for (see dlcore.models.available())")
    parser.add_argument("--checkpoint", required=True, help="a dlcore checkpoint (train / import-caffe)")
    parser.add_argument("--data", choices=("voc", "synthetic"), default="voc", help="held-out images from VOC val or SyntheticScenes val")
    parser.add_argument("--root", default=None, help="VOC folder (with VOCdevkit/VOC2012); needed for --data voc")
    parser.add_argument("--split", default="val", help="VOC split to hold images out of (default val, as the papers)")
    parser.add_argument("--size", type=int, default=128, help="SyntheticScenes image size (--data synthetic)")
    parser.add_argument("--n-heldout", type=int, default=100, help="held-out images (papers: 100)")
    parser.add_argument("--w1", type=float, nargs="+", default=[3, 4, 5], help="appearance kernel weights to try")
    parser.add_argument("--sigma-alpha", type=float, nargs="+", default=[30, 50, 80, 121], help="appearance kernel spatial widths")
    parser.add_argument("--sigma-beta", type=float, nargs="+", default=[3, 5, 10], help="appearance kernel colour widths")
    parser.add_argument("--w2", type=float, default=DEFAULTS["w2"], help="smoothness kernel weight (fixed, papers: 3)")
    parser.add_argument("--sigma-gamma", type=float, default=DEFAULTS["sigma_gamma"],
                        help="smoothness kernel width (fixed, papers: 3)")
    parser.add_argument("--iterations", type=int, default=DEFAULTS["iterations"], help="mean-field iterations (papers: 10)")
    add_run_arguments(parser)


def run_crf_search(args) -> int:
    return guarded("crf-search", _run_crf_search, args)


def _run_crf_search(args) -> int:
    # the arguments first, before any data or network is loaded
    check_flags(n_heldout=(args.n_heldout, 1, None), size=(args.size, 16, MAX_SIDE))
    check_device(args)
    for a, b, c in itertools.product(args.w1, args.sigma_alpha, args.sigma_beta):
        DenseCRF(args.iterations, w1=a, sigma_alpha=b, sigma_beta=c, w2=args.w2, sigma_gamma=args.sigma_gamma)
    split = args.split if args.data == "voc" else "val"
    dataset, description = open_dataset(args.data, split, root=args.root, n=args.n_heldout, size=args.size)
    checkpoint = load_checkpoint(args.checkpoint)
    model = load_model(checkpoint, name=args.model, device="cpu")
    check_num_classes(checkpoint, dataset.num_classes, description)  # the same check as eval
    check_scoring_memory(model, dataset, crf=True, device=args.device, fix="lower --size (synthetic data)")
    predictor = Predictor(model, device=args.device, crf=False, normalize=checkpoint_normalize(checkpoint),
                          channels_last=False)
    result = crf_search(predictor, dataset, n_heldout=args.n_heldout, w1=args.w1, sigma_alpha=args.sigma_alpha,
                        sigma_beta=args.sigma_beta, w2=args.w2, sigma_gamma=args.sigma_gamma,
                        iterations=args.iterations, progress=not args.no_progress)
    print(format_crf_search(result))
    return 0
