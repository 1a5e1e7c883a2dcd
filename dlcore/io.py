"""How dlcore writes files (docs/reliability.md).

    atomic_write(path, write_fn)      every output file: a temporary beside it, fsync, os.replace
    atomic_write_bytes(path, data)    the same for bytes in memory
    check_output_file(path, what, overwrite=True)
                                      refuse, before any work, an output file that cannot be written (or that
                                      exists, when overwrite=False: the commands' --overwrite)
    check_output_dir(path, what)      the same for an output folder
    lock_folder(path, what)           one process at a time in a folder (train's --checkpoint-dir)

(The command-line error convention is `dlcore.cli.common.command_error`.)

A killed process leaves either the old file or the new one, never half a file: readers never see a partial
checkpoint or image. What it can leave is its temporary, `.NAME.PID.tmp`; the next write of NAME (or the next
`train` in that folder) removes those whose process is gone, so they do not pile up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
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


def check_output_file(path, what: str = "output", overwrite: bool = True) -> Path:
    """ValueError unless `path` can become a file as a plain `>` redirect would allow: not a folder, not under a
    file, its folder writable, the file itself writable, a name the file system takes. A character device or a
    FIFO (`--json /dev/null`) is written through, never replaced; other special files are refused.
    overwrite=False: an existing file is refused too (a command replaces only what the user asked it to)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file path (e.g. {path / 'out'}{path.suffix or ''})")
    check_output_dir(path.parent, f"the folder of {what} {path}")
    if not path.exists():
        _check_name(path, what)
        return path
    mode = os.stat(path).st_mode
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return path
    if not stat.S_ISREG(mode):
        raise ValueError(f"{what} {path} is a special file (a block device or a socket), not a file; "
                         "give the path of a regular file")
    if not overwrite:
        raise ValueError(f"{what} {path} already exists; pass --overwrite to replace it, or choose another name")
    if not os.access(path, os.W_OK):  # os.replace would bypass the file's own permission; a redirect would not
        raise ValueError(f"{what} {path} is write-protected (mode {stat.S_IMODE(mode):o}); make it writable "
                         "(chmod u+w) if it may be replaced, or choose another name")
    return path


def _check_name(path: Path, what: str) -> None:
    """Refuse a name the file system cannot take now, not after the work: where the folder exists, by creating
    (and removing) the temporary that atomic_write will use; else by the length of each new name."""
    if path.parent.is_dir():
        probe = _temporary(path)
        try:
            os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            os.unlink(probe)
        except FileExistsError:  # our own temporary, left by a write in progress: the name works
            pass
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise ValueError(f"{what} {path} cannot be written ({e.strerror}); choose another folder") from None
            raise ValueError(f"{what} {path}: the file system cannot take this name ({e.strerror}); "
                             "choose a shorter or plainer name") from None
        return
    existing = path.parent
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    limit = os.pathconf(existing, "PC_NAME_MAX") if existing.is_dir() else 255
    new = [path.relative_to(existing).parts[:-1], [_temporary(path).name]]
    for name in (n for names in new for n in names):
        if len(os.fsencode(name)) > limit:
            raise ValueError(f"{what} {path}: the name {name[:40]}... is longer than the {limit} bytes the file "
                             "system takes; choose a shorter name")


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


def _temporary(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.tmp"


def atomic_write(path, write_fn) -> Path:
    """Write a file atomically: `write_fn(f)` fills a binary temporary in the same folder, then os.replace.

    The temporary is fsynced before the rename, so after a crash the file is the old one or the whole new one.
    Same folder: os.replace is then a rename on one file system, which is atomic. Stale temporaries of
    earlier, killed writers of the same name are removed first. What a plain write would respect holds here
    too (`check_output_file`): a write-protected file is refused, a replaced file keeps its permission bits,
    a symlink is written through to its target, and a character device or FIFO is written to, not replaced.
    """
    path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    path = check_output_file(path)
    if path.exists() and not stat.S_ISREG(os.stat(path).st_mode):  # a device or FIFO: there is nothing to replace
        with open(path, "wb") as f:
            write_fn(f)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_bytes(path, data: bytes) -> Path:
    """`atomic_write` of bytes already in memory (JSON, a .caffemodel)."""
    return atomic_write(path, lambda f: f.write(data))


class FolderInUse(ValueError):
    """`lock_folder`'s refusal; `pid` is the holder's, for a caller that words its own message."""

    def __init__(self, message: str, pid: str):
        super().__init__(message)
        self.pid = pid


@contextlib.contextmanager
def lock_folder(path, what: str = "folder"):
    """Hold `path/.lock` (created with the folder) while the block runs: a second process that asks for the same
    folder gets a ValueError naming the first one's pid, instead of both writing there (train's last.pt).

    The lock is the kernel's (flock), so a killed holder releases it; the file holds the holder's pid for the
    message, and is removed on release.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lock = path / ".lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FolderInUse(f"{what} {path} is in use by another run (pid {holder}); wait for it to end, or "
                              "choose another folder", holder) from None
        if os.path.exists(lock) and os.stat(lock).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the holder before us removed the file after we opened it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        os.unlink(lock)
        os.close(fd)
