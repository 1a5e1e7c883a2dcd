"""python -m dlcore COMMAND ...: each command lives in the module that implements it."""

import argparse
import importlib
import sys

# command -> (module, one-line help). A module gives add_arguments(parser) and main(args) -> exit code.
COMMANDS = {
    "figures": ("dlcore.figures", "run every notebook headless and regenerate figures/"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dlcore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return importlib.import_module(args._module).main(args) or 0


if __name__ == "__main__":
    sys.exit(main())
