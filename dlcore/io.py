"""How dlcore writes files (docs/reliability.md).

    atomic_write(path, write_fn)      every output file: a temporary beside it, fsync, os.replace
    atomic_write_bytes(path, data)    the same for bytes in memory
    check_output_file(path, what)     refuse, before any work, an output file that cannot be written
    check_output_dir(path, what)      the same for an output folder

(The command-line error convention is `dlcore.cli.common.command_error`.)

A killed process leaves either the old file or the new one, never half a file: readers never see a partial
checkpoint or image. What it can leave is its temporary, `.NAME.PID.tmp`; the next write of NAME (or the next
`train` in that folder) removes those whose process is gone, so they do not pile up.
"""

from __future__ import annotations

import os
from pathlib import Path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temporaries(path) -> list[Path]:
    """Remove `.NAME.PID.tmp` files beside `path` that a killed process left (its PID no longer runs)."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:-len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def check_output_file(path, what: str = "output") -> Path:
    """ValueError unless `path` can become a file: not a folder, not under a file, its folder writable."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file path (e.g. {path / 'out'}{path.suffix or ''})")
    check_output_dir(path.parent, f"the folder of {what} {path}")
    return path


def check_output_dir(path, what: str = "output folder") -> Path:
    """ValueError unless `path` is, or can be created as, a writable folder (checked without creating it)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder; give a folder path or remove the file")
    existing = path
    while not existing.exists():  # the nearest ancestor that exists decides whether mkdir can work
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ValueError(f"{what} {path} lies under the file {existing}; give a path under a folder")
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} cannot be written: {existing} is read-only for this user; "
                         "choose another folder")
    return path


def atomic_write(path, write_fn) -> Path:
    """Write a file atomically: `write_fn(f)` fills a binary temporary in the same folder, then os.replace.

    The temporary is fsynced before the rename, so after a crash the file is the old one or the whole new one.
    Same folder: os.replace is then a rename on one file system, which is atomic. Stale temporaries of
    earlier, killed writers of the same name are removed first.
    """
    path = check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_bytes(path, data: bytes) -> Path:
    """`atomic_write` of bytes already in memory (JSON, a .caffemodel)."""
    return atomic_write(path, lambda f: f.write(data))
