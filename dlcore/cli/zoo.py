"""python -m dlcore zoo train|list: the zoo's command (dlcore.cli's conventions)."""

from __future__ import annotations

import json
from pathlib import Path

from dlcore.zoo.recipe import SCHEDULES, ZOO_DIR, entry_names


def add_zoo_arguments(p) -> None:
    sub = p.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    t = sub.add_parser("train", help="train the zoo entries that are missing or altered (resumes an interrupted run)")
    t.add_argument("--only", nargs="+", metavar="NAME",
                   help="only these entries (or every seed of a model): train the missing, continue the partial")
    t.add_argument("--again", action="store_true", help="with --only: retrain them even when complete")
    t.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    t.add_argument("--zoo-dir", default=str(ZOO_DIR), help=f"where the zoo lives (default {ZOO_DIR})")
    t.add_argument("--schedule", choices=tuple(SCHEDULES), default=None,
                   help="a new zoo's schedule (default: the one the zoo's manifest names, else full); converged and "
                        "tiny need another --zoo-dir (tiny: every code path in seconds, numbers meaningless)")
    from dlcore.cli.common import add_debug_argument

    add_debug_argument(t)
    ls = sub.add_parser("list", help="every zoo entry with its state (ok, partial with its step, missing, altered)")
    ls.add_argument("--zoo-dir", default=str(ZOO_DIR), help=f"where the zoo lives (default {ZOO_DIR})")


def _state(entry: str, zoo_dir: Path) -> str:
    from dlcore.zoo.store import _complete, _ok, partial_step, read_manifest, stale_starts

    if _complete(entry, zoo_dir):
        return "ok" + _curve_note(read_manifest(zoo_dir)["entries"][entry].get("curve"), done=True)
    part = partial_step(entry, zoo_dir)
    if part is not None:
        if part[0] < 0:
            return "partial (damaged checkpoint)"
        progress = Path(zoo_dir) / "partial" / entry / "progress.json"
        curve = json.loads(progress.read_text()).get("curve") if progress.is_file() else None
        return f"partial ({part[0]}/{part[1]} steps)" + _curve_note(curve, done=False)
    stale = stale_starts(entry, zoo_dir) if entry in read_manifest(zoo_dir)["entries"] else []
    if stale:
        return "stale (not the schedule's pre-training)" if stale == [entry] else \
            f"stale (trained from an older {' and '.join(stale)})"
    return "trained, scores missing" if _ok(entry, zoo_dir) else "missing or altered"


def _curve_note(curve, done: bool) -> str:
    """The learning curve's word on the entry (held-out mean IoU, no CRF): where it ended and whether its last
    quarter added less than `PLATEAU_GAIN` (the schedule reached the plateau), or where a partial run stands."""
    from dlcore.zoo.evidence import PLATEAU_GAIN, last_quarter_gain

    if not curve:
        return ""
    if not done:
        return f"; held-out mean IoU {curve[-1][1]:.1f} at step {curve[-1][0]}"
    gain = last_quarter_gain(curve)
    verdict = "plateau" if gain < PLATEAU_GAIN else "still rising"
    return f"; held-out mean IoU {curve[-1][1]:.1f}, last quarter {gain:+.1f} ({verdict})"


def run_zoo(args) -> int:
    from dlcore import resolve_device
    from dlcore.cli.common import command_error
    from dlcore.io import check_output_dir
    from dlcore.zoo.store import claim_schedule, read_manifest, schedule_of
    from dlcore.zoo.training import train_all

    zoo_dir = Path(getattr(args, "zoo_dir", ZOO_DIR))
    try:
        if args.zoo_command == "list":
            if not zoo_dir.is_dir():
                raise ValueError(f"--zoo-dir {zoo_dir} is not a folder; give the zoo's folder (default {ZOO_DIR})")
            schedule = schedule_of(zoo_dir)  # a damaged manifest is named, not every intact file listed as altered
            print(f"{zoo_dir}: the {schedule.name!r} schedule")
            for entry in entry_names(schedule):
                print(f"{entry:<40} {_state(entry, zoo_dir)}")
            return 0
        device = resolve_device(args.device)
        check_output_dir(zoo_dir, "--zoo-dir")  # before any training: a bad folder fails now, not after an hour
        read_manifest(zoo_dir)  # a damaged manifest would make every entry look missing and be retrained
        schedule = SCHEDULES[args.schedule] if args.schedule else schedule_of(zoo_dir)
        if schedule.name != "full" and zoo_dir.resolve() == ZOO_DIR.resolve():
            raise ValueError(f"--schedule {schedule.name} would overwrite the shipped zoo; pass --zoo-dir DIR")
        claim_schedule(zoo_dir, schedule)
        if args.again and not args.only:
            raise ValueError("--again retrains the entries --only names; give --only NAME (or retrain all: "
                             "a new --zoo-dir)")
        train_all(args.only, force=args.again, device=device, zoo_dir=zoo_dir)
    except KeyboardInterrupt:
        print(f"zoo: interrupted; run the same command again to continue from the last checkpoint "
              f"(`python -m dlcore zoo list --zoo-dir {zoo_dir}` shows each entry's step)", flush=True)
        return 130
    except (ValueError, OSError, FloatingPointError) as e:
        return command_error("zoo", e, args)
    return 0
