"""python -m dlcore COMMAND ...: each command lives in the module that implements it."""

import argparse
import importlib
import sys

# command -> (module, one-line help). The module gives add_<cmd>_arguments(parser) and run_<cmd>(args) -> exit
# code, with <cmd> the command's name, '-' written '_'. Modules are imported only to build the parser.
COMMANDS = {
    "figures": ("dlcore.figures", "run every notebook headless and regenerate figures/"),
}


def _hooks(command: str, module: str):
    mod, cmd = importlib.import_module(module), command.replace("-", "_")
    return getattr(mod, f"add_{cmd}_arguments"), getattr(mod, f"run_{cmd}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dlcore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_command=name)
        _hooks(name, module)[0](p)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return _hooks(args._command, COMMANDS[args._command][0])[1](args) or 0


if __name__ == "__main__":
    sys.exit(main())
