"""`python -m dlcore student [--out DIR] [--only NN]`: the notebooks' clean student copies (`dlcore.student`), their
exercise cells emptied, into build/student/ (never into notebooks/, which holds the worked solutions)."""

from __future__ import annotations

from pathlib import Path

from dlcore.cli.common import add_debug_argument, guarded


def add_student_arguments(parser) -> None:
    from dlcore.student import STUDENT

    parser.add_argument("--out", type=Path, default=STUDENT, metavar="DIR",
                        help=f"where the copies go, outside notebooks/ (default {STUDENT})")
    parser.add_argument("--only", metavar="NN", help="copy only the notebook whose name starts with NN, e.g. 04")
    add_debug_argument(parser)


def run_student(args) -> int:
    return guarded("student", _run_student, args)


def _run_student(args) -> int:
    from dlcore.student import write_student_copies

    written, pending = write_student_copies(out=args.out, only=args.only)
    for path in written:
        print(path)
    for name in pending:
        print(f"{name}: no exercise cells yet, so nothing to blank (copied with its outputs cleared)")
    print(f"{len(written)} student copies in {args.out}, exercise cells emptied; to hand them out, put them in place "
          "of notebooks/ in the students' copy of the project (they read ../zoo and ../figures)")
    return 0
