"""`python -m dlcore download voc --root DIR [--sbd]`: PASCAL VOC 2012 (+ SBD), fetched and checked (`dlcore.data.download`)."""

from __future__ import annotations

from dlcore.cli.common import add_debug_argument, command_error
from dlcore.data import download


def add_download_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    voc = sub.add_parser("voc", help="PASCAL VOC 2012 trainval (+ SBD trainaug labels with --sbd)",
                         description=download.__doc__.split("\n\n")[1])
    voc.add_argument("--root", required=True, help="folder to download into; VOCdevkit/VOC2012 is created inside")
    voc.add_argument("--sbd", action="store_true", help="also fetch SegmentationClassAug (SBD, for split trainaug)")
    voc.add_argument("--keep", action="store_true", help="keep the downloaded archives after unpacking")
    voc.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_argument(voc)


def run_download(args) -> int:
    try:
        voc = download.download_voc(args.root, sbd=args.sbd, keep=args.keep, progress=not args.no_progress)
    except Exception as exc:  # one line (docs/reliability.md); --debug shows the traceback
        command_error("download", exc, args)
        return 1  # every download problem arises while running: the network, a checksum, a damaged archive
    print(f"PASCAL VOC 2012 is in {voc}; use VOCSegmentation({str(args.root)!r}, split='train'|'val'"
          + ("|'trainaug'" if args.sbd else "") + ")")
    return 0
