"""python -m dlcore zoo train|list: the zoo's command (dlcore.cli's conventions)."""

from __future__ import annotations

from pathlib import Path

from dlcore.zoo.recipe import ZOO_DIR, entry_names, use_tiny_schedule
from dlcore.zoo.store import _ok, read_manifest
from dlcore.zoo.training import train_all

def add_zoo_arguments(p) -> None:
    sub = p.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    t = sub.add_parser("train", help="train the zoo entries that are missing or altered (resumes an interrupted run)")
    t.add_argument("--only", nargs="+", metavar="NAME", help="retrain these entries (or every seed of a model)")
    t.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    t.add_argument("--zoo-dir", default=str(ZOO_DIR), help=f"where the zoo lives (default {ZOO_DIR})")
    t.add_argument("--schedule", choices=("full", "tiny"), default="full",
                   help="tiny: every code path in seconds, numbers meaningless (needs another --zoo-dir)")
    from dlcore.cli.common import add_debug_argument

    add_debug_argument(t)
    ls = sub.add_parser("list", help="every zoo entry with its state (ok, missing, altered)")
    ls.add_argument("--zoo-dir", default=str(ZOO_DIR), help=f"where the zoo lives (default {ZOO_DIR})")


def run_zoo(args) -> int:
    from dlcore import resolve_device
    from dlcore.cli.common import command_error
    from dlcore.io import check_output_dir

    zoo_dir = Path(getattr(args, "zoo_dir", ZOO_DIR))
    try:
        if args.zoo_command == "list":
            if not zoo_dir.is_dir():
                raise ValueError(f"--zoo-dir {zoo_dir} is not a folder; give the zoo's folder (default {ZOO_DIR})")
            read_manifest(zoo_dir)  # a damaged manifest is named, not every intact file listed as altered
            for entry in entry_names():
                state = "ok" if _ok(entry, zoo_dir) else "missing or altered"
                print(f"{entry:<40} {state}")
            return 0
        device = resolve_device(args.device)
        check_output_dir(zoo_dir, "--zoo-dir")  # before any training: a bad folder fails now, not after an hour
        read_manifest(zoo_dir)  # a damaged manifest would make every entry look missing and be retrained
        if args.schedule == "tiny":
            if zoo_dir.resolve() == ZOO_DIR.resolve():
                raise ValueError("--schedule tiny would overwrite the shipped zoo; pass --zoo-dir DIR")
            use_tiny_schedule()
        train_all(args.only, force=bool(args.only), device=device, zoo_dir=zoo_dir)
    except (ValueError, OSError, FloatingPointError) as e:
        return command_error("zoo", e, args)
    return 0
