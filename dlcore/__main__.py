"""python -m dlcore COMMAND ...: each command lives in the module that implements it."""

import argparse
import importlib
import sys

# command -> (module, one-line help). The module gives add_<cmd>_arguments(parser) and run_<cmd>(args) -> exit
# code, with <cmd> the command's name, '-' written '_'. Only the chosen command's module is imported.
COMMANDS = {
    "train": ("dlcore.engine", "train a model (synthetic data or PASCAL VOC), with checkpoints and --resume"),
    "eval": ("dlcore.engine", "evaluate a checkpoint: mIoU and the papers' other scores, optional MSC/flip/CRF"),
    "segment": ("dlcore.segment", "segment photographs: VOC-palette label PNG and overlay per image"),
    "zoo": ("dlcore.zoo", "train the teaching zoo (the models the notebooks load), or list it with its checksums"),
    "figures": ("dlcore.figures", "run every notebook headless and regenerate figures/"),
    "download": ("dlcore.data.download", "download PASCAL VOC 2012 / SBD (needs internet; never run by tests)"),
    "crf-search": ("dlcore.protocol", "cross-validate the CRF's w1, sigma_alpha, sigma_beta on held-out images"),
    "import-caffe": ("dlcore.weights", "convert a published DeepLab .caffemodel into a dlcore checkpoint"),
}


def _hooks(command: str):
    module = importlib.import_module(COMMANDS[command][0])
    cmd = command.replace("-", "_")
    return getattr(module, f"add_{cmd}_arguments"), getattr(module, f"run_{cmd}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; with `command`, that command's full sub-parser (its module imported)."""
    parser = argparse.ArgumentParser(prog="python -m dlcore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == command:
            _hooks(name)[0](p)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    return _hooks(args.command)[1](args) or 0


if __name__ == "__main__":
    sys.exit(main())
