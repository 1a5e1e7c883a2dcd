"""`python -m dlcore book`: the static site of the executed notebooks (`dlcore.book`), offline, in build/book/."""

from __future__ import annotations

from pathlib import Path

from dlcore.cli.common import add_debug_argument, guarded


def add_book_arguments(parser) -> None:
    from dlcore.book import BOOK, EXECUTED

    parser.add_argument("--executed", type=Path, default=EXECUTED, metavar="DIR",
                        help="the executed notebooks that `make figures` wrote (default build/notebooks)")
    parser.add_argument("--out", type=Path, default=BOOK, metavar="DIR", help="where the site goes (default build/book)")
    add_debug_argument(parser)


def run_book(args) -> int:
    return guarded("book", _run_book, args)


def _run_book(args) -> int:
    from dlcore.book import build

    index = build(out=args.out, src=args.out.parent / "book-src", executed_dir=args.executed)
    print(f"the book: {index} (open it in a browser; it needs no network)")
    return 0
