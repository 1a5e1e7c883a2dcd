"""`python -m dlcore figures [--smoke] [--only NN] [--jobs N]`: every notebook headless (`dlcore.figures`), figures regenerated."""

from __future__ import annotations

import sys

from dlcore.cli.common import add_debug_argument, add_device_argument, check_device, guarded
from dlcore.figures import (CHECK_OUTPUT, ROOT, NotebookFailed, checked_cells, default_fig_dir, default_jobs, notebooks,
                            run_all, store_checked_outputs, table, write_claims_page)


def add_figures_arguments(parser) -> None:
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes and steps (what the tests run); figures to build/smoke-figures/, not figures/")
    parser.add_argument("--only", metavar="NN", help="run only the notebooks whose name starts with NN, e.g. 02")
    parser.add_argument("--store-checked", action="store_true",
                        help=f"after the run, store the outputs of the cells marked '{CHECK_OUTPUT}' in notebooks/ "
                             "(the stored tables nbval checks); every other cell stays clean")
    parser.add_argument("--jobs", type=int, default=default_jobs(), metavar="N",
                        help="notebooks run side by side, the cores shared between them (default %(default)s)")
    add_device_argument(parser)
    add_debug_argument(parser)


def run_figures(args) -> int:
    return guarded("figures", _run_figures, args)


def _run_figures(args) -> int:
    check_device(args)
    try:
        if args.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
        results = run_all(smoke=args.smoke, only=args.only, device=args.device, jobs=args.jobs)
    except NotebookFailed as e:  # the failing cell's source first (many lines), then the one-line error
        lines = str(e).splitlines()
        print("\n".join(lines[1:]), file=sys.stderr)
        raise NotebookFailed(f"{lines[0]}; its executed copy is in build/notebooks/") from None
    print(table(results))
    print(f"figures written to {default_fig_dir(args.smoke)}/")
    if not args.smoke and not args.only:  # every notebook ran in full: their claims make the comparison page
        print(f"the papers against ours: {write_claims_page()}")
    if args.store_checked:
        out_dir = ROOT / "build" / "notebooks"
        for path in notebooks(args.only):
            if checked_cells(path):
                print(f"{path.name}: stored the output of {store_checked_outputs(out_dir / path.name, path)} checked cells")
    return 0
