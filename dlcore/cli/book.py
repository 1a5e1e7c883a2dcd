"""`python -m dlcore book`: the static site of the executed notebooks (`dlcore.book`), offline, in build/book/."""

from __future__ import annotations

from dlcore.cli.common import add_rendering_arguments, guarded


def add_book_arguments(parser) -> None:
    from dlcore.book import BOOK

    add_rendering_arguments(parser, BOOK, "the site's pages")


def run_book(args) -> int:
    return guarded("book", _run_book, args)


def _run_book(args) -> int:
    from dlcore.book import build

    index = build(out=args.out, src=args.out.parent / "book-src", executed_dir=args.executed)
    print(f"the book: {index} (open it in a browser; it needs no network)")
    return 0
