"""`python -m dlcore segment IMAGE_OR_DIR ... --checkpoint CKPT [--model NAME] [--crf] --out DIR`.

Everything is checked before anything is written (`_prepare`); then each image goes through `dlcore.segment`
and `dlcore.inference.Predictor`, and each output is written atomically (docs/reliability.md).
"""

from __future__ import annotations

import math
from pathlib import Path

from dlcore.checkpoint import checkpoint_normalize, load_checkpoint, load_model
from dlcore.cli.common import MAX_SIDE, add_run_arguments, check_device, check_flags, checkpoint_crf, guarded
from dlcore.data import image_size, read_image
from dlcore.inference import Predictor
from dlcore.io import atomic_write, check_output_dir
from dlcore.segment import check_segment_memory, collect_images, image_writer, plan_outputs, segment_image
from dlcore.viz import overlay


def add_segment_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    parser.add_argument("--model", default=None,
                        help="model name; checked against the checkpoint (default: the checkpoint's model)")
    parser.add_argument("--checkpoint", required=True, help="a dlcore checkpoint (train or import-caffe)")
    parser.add_argument("--out", required=True, help="output folder: <stem>.png labels and <stem>_overlay.<ext>")
    parser.add_argument("--crf", action="store_true",
                        help="refine with the fully connected CRF (the checkpoint's CRF settings if it records "
                             "them, else DeepLab-LargeFOV's w1=4 sigma_alpha=121 sigma_beta=5 w2=3 sigma_gamma=3)")
    parser.add_argument("--max-side", type=int, default=1024,
                        help="resize so the longer side is at most this many pixels; labels resized back (nearest)")
    parser.add_argument("--overlay-format", choices=("jpg", "png"), default="jpg", help="overlay file type")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace label maps and overlays already in --out (default: refuse to)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the label colours, 0..1")
    add_run_arguments(parser)


def _prepare(args):
    """Every check that can fail on the inputs, before any output exists: -> (plan, checkpoint, model).

    The cheap checks (arguments, paths) come first, so a typo is reported before the model loads; the images'
    sizes are read from their headers, and the memory the largest needs is estimated before any is decoded.
    """
    if not (math.isfinite(args.alpha) and 0.0 <= args.alpha <= 1.0):
        raise ValueError(f"--alpha must be an opacity in [0, 1] (0 = photo only, 1 = labels only), got {args.alpha}")
    check_flags(max_side=(args.max_side, 1, MAX_SIDE))
    check_device(args)
    paths = collect_images(args.inputs)
    check_output_dir(args.out, "--out")
    plan = plan_outputs(paths, args.out, args.overlay_format, also_read=[args.checkpoint], overwrite=args.overwrite)
    sizes = {p: image_size(p) for p in paths}
    checkpoint = load_checkpoint(args.checkpoint)
    model = load_model(checkpoint, name=args.model, device="cpu")
    if model.num_classes > 256:
        raise ValueError(f"the checkpoint predicts {model.num_classes} classes; a label PNG holds at most 256 (0..255)")
    largest = max(paths, key=lambda p: sizes[p][0] * sizes[p][1])
    check_segment_memory(model, largest, *sizes[largest], args.max_side, args.crf, args.device)
    for p in paths:  # decode every image once now, so a bad one stops the run before anything is written
        read_image(p)
    return plan, checkpoint, model
def run_segment(args) -> int:
    return guarded("segment", _segment, args)


def _segment(args) -> int:
    from tqdm.auto import tqdm

    plan, checkpoint, model = _prepare(args)
    crf = checkpoint_crf(args.crf, checkpoint.get("meta") or {})
    predictor = Predictor(model, device=args.device, crf=crf, normalize=checkpoint_normalize(checkpoint))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for p, label_path, overlay_path in tqdm(plan, desc="segment", unit="image", disable=args.no_progress):
        image = read_image(p)
        labels = segment_image(predictor, image, args.max_side)
        blend = overlay(image.permute(1, 2, 0).numpy(), labels, alpha=args.alpha)  # both made before either is written
        atomic_write(label_path, image_writer(labels, label_path, palette=True))
        atomic_write(overlay_path, image_writer(blend, overlay_path))
    print(f"segment: {len(plan)} image(s) -> {out}/ (<stem>.png labels, <stem>_overlay.{args.overlay_format})")
    return 0
