"""python -m dlcore COMMAND ...: the command line, one module per command, one error convention (`common`).

Each command module gives add_<cmd>_arguments(parser) and run_<cmd>(args) -> exit code. Only the module of the
command asked for is imported (importing torchvision alone takes seconds), so `--help` stays quick.
"""

from __future__ import annotations

import argparse
import sys

# command -> one-line help, in the order `python -m dlcore --help` lists them
COMMANDS = {
    "train": "train a model (synthetic data or PASCAL VOC), with checkpoints and --resume",
    "eval": "evaluate a checkpoint: mIoU and the papers' other scores, optional MSC/flip/CRF",
    "segment": "segment photographs: a VOC-palette label PNG and an overlay per image",
    "zoo": "train the teaching zoo (the models the notebooks load), or list it with its checksums",
    "figures": "run every notebook headless and regenerate figures/",
    "book": "build the static site of the executed notebooks (build/book/, offline)",
    "slides": "export the notebooks' lecture slides as static reveal.js decks (build/slides/, offline)",
    "student": "write the notebooks' student copies, exercise cells emptied (build/student/)",
    "download": "download PASCAL VOC 2012 / SBD (needs internet; never run by tests)",
    "crf-search": "cross-validate the CRF's w1, sigma_alpha, sigma_beta on held-out images",
    "import-caffe": "convert a published DeepLab .caffemodel into a dlcore checkpoint",
}


def _module(command: str):
    """The module that implements `command` (imported here, on demand)."""
    if command == "train":
        from dlcore.cli import train as module
    elif command == "eval":
        from dlcore.cli import eval as module
    elif command == "segment":
        from dlcore.cli import segment as module
    elif command == "zoo":
        from dlcore.cli import zoo as module
    elif command == "figures":
        from dlcore.cli import figures as module
    elif command == "book":
        from dlcore.cli import book as module
    elif command == "slides":
        from dlcore.cli import slides as module
    elif command == "student":
        from dlcore.cli import student as module
    elif command == "download":
        from dlcore.cli import download as module
    elif command == "crf-search":
        from dlcore.cli import crf_search as module
    elif command == "import-caffe":
        from dlcore.cli import import_caffe as module
    else:
        raise ValueError(f"unknown command {command!r}; choose one of {list(COMMANDS)}")
    return module


def hooks(command: str):
    """(add_<cmd>_arguments, run_<cmd>) of `command` ('-' written '_')."""
    module, name = _module(command), command.replace("-", "_")
    return getattr(module, f"add_{name}_arguments"), getattr(module, f"run_{name}")


class _OneLinePerCommand(argparse.HelpFormatter):
    """--help with each command and its help on one line (argparse sizes the name column before it sees them)."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=24, width=120)
        self._action_max_length = max(map(len, COMMANDS)) + 6


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; with `command`, that command's full sub-parser (its module imported)."""
    parser = argparse.ArgumentParser(prog="python -m dlcore", description=__doc__.split("\n\n")[0],
                                     formatter_class=_OneLinePerCommand)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_ in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == command:
            hooks(name)[0](p)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    return hooks(args.command)[1](args) or 0
