"""`python -m dlcore slides [--only NN]`: the notebooks' lecture slides as static reveal.js decks (`dlcore.slides`)."""

from __future__ import annotations


from dlcore.cli.common import add_rendering_arguments, guarded


def add_slides_arguments(parser) -> None:
    from dlcore.slides import SLIDES

    parser.add_argument("--only", metavar="NN", help="export only the notebook whose name starts with NN, e.g. 04")
    add_rendering_arguments(parser, SLIDES, "the decks")


def run_slides(args) -> int:
    return guarded("slides", _run_slides, args)


def _run_slides(args) -> int:
    from dlcore.slides import SlidesError, export_all

    decks, missing = export_all(only=args.only, executed_dir=args.executed, out_dir=args.out)
    for deck in decks:
        print(f"{deck}")
    if missing:
        raise SlidesError(f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no slide metadata, so no "
                          f"deck (the {len(decks)} others were written to {args.out})")
    print(f"{len(decks)} decks in {args.out}: open one in a browser (no network needed); arrows or space advance")
    return 0
