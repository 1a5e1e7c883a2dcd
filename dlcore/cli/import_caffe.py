"""`python -m dlcore import-caffe FILE.caffemodel --model NAME --out OUT.pt`: a published model as a checkpoint."""

from __future__ import annotations

from pathlib import Path

from dlcore.caffe import import_caffe, read_caffemodel
from dlcore.checkpoint import checkpoint_meta, save_checkpoint
from dlcore.cli.common import add_debug_argument, check_flags, guarded
from dlcore.crf import paper_crf
from dlcore.io import check_output_file
from dlcore.models import build_model


def add_import_caffe_arguments(parser) -> None:
    parser.add_argument("caffemodel", metavar="FILE.caffemodel", help="a published DeepLab / FCN .caffemodel")
    parser.add_argument("--model", required=True, help="dlcore model name, e.g. deeplab-v1-largefov or "
                        "deeplab-v2-resnet101-aspp-l-msc (python -c 'import dlcore.models as m; print(m.available())')")
    parser.add_argument("--out", required=True, help="the dlcore checkpoint to write (e.g. largefov.pt)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: refuse to)")
    parser.add_argument("--num-classes", type=int, default=21, help="classes of the file's score layer (21 for VOC)")
    parser.add_argument("--dataset", default=None,
                        help="suffix of the class-score layers (fc8_<dataset>, fc1_<dataset>_c0); default: found in the file")
    parser.add_argument("--backbone-only", action="store_true",
                        help="import all but the class-score layers (ImageNet / COCO initialisation models)")
    parser.add_argument("--output-stride", type=int, default=None, help="ResNet-101 models: 8 (default) or 16")
    parser.add_argument("--freeze-bn", action="store_true", help="ResNet-101 models: batch norm frozen when fine-tuned")
    parser.add_argument("--width", type=float, default=1.0,
                        help="channel width (1.0 for the published models; smaller only for test files)")
    add_debug_argument(parser)


def run_import_caffe(args) -> int:
    return guarded("import-caffe", _run_import_caffe, args)


def _run_import_caffe(args) -> int:
    check_flags(num_classes=(args.num_classes, 1, None))
    # the output first: it must not be the input (that would replace the caffemodel), nor a folder
    source, out = Path(args.caffemodel), Path(args.out)
    if out.resolve() == source.resolve():
        raise ValueError(f"--out {out} is the input caffemodel itself; write the checkpoint to another file "
                         f"(e.g. {source.with_suffix('.pt')})")
    check_output_file(out, "--out", args.overwrite)
    options = {}
    if args.output_stride is not None:
        options["output_stride"] = args.output_stride
    if args.freeze_bn:
        options["freeze_bn"] = True
    if args.model.startswith("deeplab-v2-resnet101"):
        options["caffe"] = True  # the released weights were trained with Caffe's strides and pool1
    layers = read_caffemodel(source)  # read (and checked) before the network is built
    model = build_model(args.model, num_classes=args.num_classes, width=args.width, **options)
    try:
        report = import_caffe(model, layers, dataset=args.dataset, backbone_only=args.backbone_only)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    meta = checkpoint_meta(model, normalize="caffe", meta={
        "source": f"caffe:{source.name}", "data": {"data": "voc"},
        "crf": paper_crf(args.model), "backbone_only": bool(args.backbone_only)})
    save_checkpoint(out, model=model.state_dict(), step=0, meta=meta)
    print(f"import-caffe: {report['layers']} Caffe layers ({report['parameters'] / 1e6:.1f}M values) -> {out} "
          f"({args.model}, {args.num_classes} classes, BGR Caffe-mean input: normalize='caffe')")
    if report["skipped"]:
        print(f"  skipped {len(report['skipped'])} MSC shared-weight copies (*_res075, *_res05)")
    return 0
