"""`python -m dlcore download voc --root DIR [--sbd]`: fetch PASCAL VOC 2012 (and SBD's trainaug labels).

Needs internet; nothing in the tests or in any default path calls it. Every archive is downloaded to a
`.part` file, checked against its published checksum, renamed, and unpacked with `safe_extract`, which
refuses members that would land outside DIR (absolute paths, `..`), links pointing outside it, and device
or FIFO files, so a tampered archive cannot write anywhere else on the machine.

Result: DIR/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation, ...} and, with --sbd,
DIR/VOCdevkit/VOC2012/SegmentationClassAug/*.png (10,582 trainaug labels + the VOC val ones, as the
DeepLab authors distribute them); `VOCSegmentation(DIR, "trainaug")` then derives the trainaug id list.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class Archive:
    name: str
    url: str
    filename: str
    md5: str | None  # the published checksum; None where the host publishes none (then sha256 is printed)
    dest: str  # folder under --root it unpacks into


VOC2012 = Archive("PASCAL VOC 2012 trainval (~2 GB)",
                  "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                  "VOCtrainval_11-May-2012.tar", "6cd6e144f989b92b3379bac3b3de84fd", ".")
# SBD (Hariharan et al. 2011) converted to VOC-style PNGs by the DeepLab authors; the host publishes no checksum.
SBD_AUG = Archive("SBD SegmentationClassAug labels (~30 MB)",
                  "https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip?dl=1",
                  "SegmentationClassAug.zip", None, "VOCdevkit/VOC2012")
ARCHIVES = {"voc": VOC2012, "sbd": SBD_AUG}


def file_digest(path, algorithm: str = "md5", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(path, md5: str | None = None, sha256: str | None = None) -> None:
    """Raise ValueError when `path` does not match the given checksum(s)."""
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected is not None:
            got = file_digest(path, algorithm)
            if got.lower() != expected.lower():
                raise ValueError(f"{path}: {algorithm} {got} does not match the published {expected}; the download "
                                 "is corrupt or was tampered with. Delete it and run the download again.")


def fetch(url: str, path, *, md5: str | None = None, sha256: str | None = None, progress=True) -> Path:
    """Download `url` to `path` through `path.part` (renamed only once complete and verified)."""
    path = Path(path)
    if path.exists():
        verify(path, md5, sha256)
        return path
    part = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url) as response, open(part, "wb") as out:  # noqa: S310 (fixed https/http urls)
        total = int(response.headers.get("Content-Length") or 0)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=path.name)
        while block := response.read(1 << 20):
            out.write(block)
            if bar is not None:
                bar.update(len(block))
        if bar is not None:
            bar.close()
    verify(part, md5, sha256)
    os.replace(part, path)
    return path


def _inside(dest: Path, name: str) -> bool:
    target = (dest / name).resolve()
    return target == dest or dest in target.parents


def _check_name(dest: Path, name: str, archive) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ValueError(f"{archive}: refusing absolute member path {name!r}")
    if ".." in p.parts:
        raise ValueError(f"{archive}: refusing member {name!r}: '..' would leave the destination")
    if not _inside(dest, name):
        raise ValueError(f"{archive}: refusing member {name!r}: it resolves outside {dest}")


def _follow(name: str, links: dict[str, str], follow_last: bool) -> str | None:
    """Where `name` (relative to the destination) lands once the archive's symlinks written before it are
    followed, as the file system will follow them; None when that leaves the destination.

    A lexical check alone passes chains such as `a -> .`, `b -> a/..`, `b/X`: `b` looks like `.`, but on disk
    `a/..` is the destination's parent, and `X` would be written beside it.
    """
    parts, resolved, hops = list(PurePosixPath(name).parts), [], 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return None
            resolved.pop()
            continue
        here = "/".join(resolved + [part])
        if here in links and (parts or follow_last):
            hops += 1
            target = links[here]
            if hops > 40 or PurePosixPath(target).is_absolute():  # a loop, or a link out of the tree
                return None
            parts = list(PurePosixPath(target).parts) + parts  # relative to the link's folder, `resolved`
            continue
        resolved.append(part)
    return "/".join(resolved)


def _check_tar_members(members, dest: Path, archive) -> None:
    """Refuse the whole archive if any member, followed through the links before it, would land outside dest."""
    links: dict[str, str] = {}
    for m in members:
        _check_name(dest, m.name, archive)
        if m.ischr() or m.isblk() or m.isfifo() or m.isdev():
            raise ValueError(f"{archive}: refusing device/FIFO member {m.name!r}")
        if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise ValueError(f"{archive}: refusing member {m.name!r} of unsupported type")
        where = _follow(m.name, links, follow_last=False)
        if where is None or not _inside(dest, where):
            raise ValueError(f"{archive}: refusing member {m.name!r}: through the links before it, it lands "
                             f"outside {dest}")
        if m.issym():
            parent = PurePosixPath(where).parent.as_posix()
            target = None if PurePosixPath(m.linkname).is_absolute() else \
                _follow(f"{parent}/{m.linkname}", links, follow_last=True)
            if target is None or not _inside(dest, target):
                raise ValueError(f"{archive}: refusing symlink {m.name!r} -> {m.linkname!r}: points outside {dest}")
            links[where] = m.linkname
        else:
            links.pop(where, None)  # a file or folder written over a link replaces it
        if m.islnk():
            target = None if PurePosixPath(m.linkname).is_absolute() else _follow(m.linkname, links, True)
            if target is None or ".." in PurePosixPath(m.linkname).parts or not _inside(dest, target):
                raise ValueError(f"{archive}: refusing hardlink {m.name!r} -> {m.linkname!r}: points outside {dest}")


_DAMAGED = "is truncated or damaged ({}); delete it and download it again"
# An archive whose members add up to more than this many times its own size, and to more than RATIO_FLOOR bytes,
# is refused as a decompression bomb: the VOC tar is ~1x, zips of PNGs ~1x, compressed text ~10x.
MAX_RATIO = 100
RATIO_FLOOR = 16 << 20


def safe_extract(archive, dest, *, max_ratio: float = MAX_RATIO) -> list[str]:
    """Unpack a tar (any compression) or zip into `dest`; returns the member names.

    Everything is checked before anything is written: a member with an absolute path or `..`, a member that
    the archive's own symlinks (chains included) would carry outside `dest`, a symlink or hardlink whose target
    lies outside it, a device / FIFO, a member under a file member (`a`, then `a/b`), members that add up to
    more than the free space at `dest` or to more than `max_ratio` times the archive (a decompression bomb)
    raise ValueError and nothing is extracted. The members are then unpacked into a temporary folder inside
    `dest` and moved into place only once every one has been read and verified (zip CRCs, tar sizes), so a
    truncated or damaged archive is a ValueError that leaves `dest` as it was (tarfile / zlib / zipfile raise
    several other kinds).
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} does not exist")
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    staging = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".extract", dir=dest))
    try:
        try:
            names = _extract(archive, dest, staging, max_ratio)
        except (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, EOFError, zlib.error, lzma.LZMAError) as e:
            raise ValueError(f"{archive} " + _DAMAGED.format(f"{type(e).__name__}: {e}")) from None
        _move_into(staging, dest, archive)
        return names
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_tree(entries, archive) -> None:
    """entries: (name, is_file) in archive order. Refuse a member under a file member (`a`, then `a/b`) or a file
    member where an earlier one made a folder: extraction would fail half-way with NotADirectoryError."""
    files, folders = set(), set()
    for name, is_file in entries:
        parts = tuple(p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", "."))
        for i in range(1, len(parts)):
            if parts[:i] in files:
                raise ValueError(f"{archive}: member {name!r} lies under the file member {'/'.join(parts[:i])!r}; "
                                 "the archive is malformed: delete it and download it again")
            folders.add(parts[:i])
        if is_file and parts in folders:
            raise ValueError(f"{archive}: file member {name!r} has the name of a folder in the archive; "
                             "the archive is malformed: delete it and download it again")
        (files if is_file else folders).add(parts)


def _check_size(total: int, archive: Path, dest: Path, max_ratio: float) -> None:
    """Refuse, from the members' declared sizes (the most that zipfile and tarfile will write), an archive that
    would fill the disk or is a decompression bomb."""
    free = shutil.disk_usage(dest).free
    if total > free:
        raise ValueError(f"{archive} unpacks to {total / 2**30:.2f} GiB, but only {free / 2**30:.2f} GiB are free "
                         f"at {dest}; free some space or unpack it elsewhere")
    ratio = total / max(1, archive.stat().st_size)
    if total > RATIO_FLOOR and ratio > max_ratio:
        raise ValueError(f"{archive} unpacks to {total / 2**20:.0f} MiB, {ratio:.0f}x its own size (the limit is "
                         f"{max_ratio:g}x): a decompression bomb, not a data set; delete it and check its source")


def _extract(archive: Path, dest: Path, staging: Path, max_ratio: float) -> list[str]:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            infos = z.infolist()
            for info in infos:
                _check_name(dest, info.filename, archive)
                mode = info.external_attr >> 16
                if mode and (mode & 0o170000) not in (0, 0o100000, 0o040000):  # only files and folders
                    raise ValueError(f"{archive}: refusing member {info.filename!r}: not a plain file or folder")
            _check_tree([(i.filename, not i.is_dir()) for i in infos], archive)
            _check_size(sum(i.file_size for i in infos), archive, dest, max_ratio)
            z.extractall(staging)  # reads every member to its end, so each one's CRC-32 is checked
            return [i.filename for i in infos]
    if not tarfile.is_tarfile(archive):
        raise ValueError(f"{archive} is neither a tar nor a zip archive; delete it and download it again")
    with tarfile.open(archive) as tar:
        members = tar.getmembers()  # reads every header: a truncated archive fails here, before any write
        _check_tar_members(members, dest, archive)
        _check_tree([(m.name, m.isfile() or m.islnk()) for m in members if not m.issym()], archive)  # links: above
        _check_size(sum(m.size for m in members if m.isfile()), archive, dest, max_ratio)
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # belt and braces on new Pythons
        tar.extractall(staging, members=members, **kwargs)
        return [m.name for m in members]


def _move_into(staging: Path, dest: Path, archive: Path) -> None:
    """Move the unpacked tree into `dest`, merging into the folders already there. Every clash is found before
    the first move, and each move is a rename in one file system, so `dest` gets all of it or nothing new."""
    moves = []

    def plan(src: Path, target: Path) -> None:
        for entry in sorted(os.scandir(src), key=lambda e: e.name):
            to = target / entry.name
            here_folder = to.is_dir() and not to.is_symlink()  # never merge through a link already at dest
            if entry.is_dir(follow_symlinks=False) and here_folder:
                plan(Path(entry.path), to)
            elif here_folder or (entry.is_dir(follow_symlinks=False) and os.path.lexists(to)):
                raise ValueError(f"{archive}: {to} already exists as a {'folder' if here_folder else 'file or link'}"
                                 f" where the archive has a {'file' if here_folder else 'folder'}; move it away "
                                 "and unpack again")
            else:
                moves.append((entry.path, to))

    plan(staging, dest)
    for src, to in moves:
        os.replace(src, to)


def download_voc(root, *, sbd: bool = False, keep: bool = False, progress: bool = True) -> Path:
    """Fetch, verify and unpack VOC 2012 (and the SBD trainaug labels) under `root`; returns the VOC2012 folder."""
    root = Path(root).expanduser()
    for archive in [VOC2012] + ([SBD_AUG] if sbd else []):
        path = fetch(archive.url, root / archive.filename, md5=archive.md5, progress=progress)
        if archive.md5 is None:
            print(f"{archive.filename}: no published checksum; sha256 {file_digest(path, 'sha256')}")
        safe_extract(path, root / archive.dest)
        if not keep:
            path.unlink()
    voc = root / "VOCdevkit" / "VOC2012"
    macosx = voc / "__MACOSX"  # the SBD zip carries macOS resource forks
    if macosx.is_dir():
        shutil.rmtree(macosx)
    return voc
