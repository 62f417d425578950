"""Extracting archives that may be hostile.

Every archive BatOS unpacks goes through :func:`safe_extract`. A tar is extracted with the
``data`` filter (PEP 706), which refuses absolute paths, ``..``, links that leave the target,
device files and special permissions; a zip member that is absolute, climbs out with ``..``, or is
a symbolic link is refused. The member count and the total unpacked size are capped: the total at
``max_bytes`` (``BATOS_MAX_ARCHIVE_BYTES``) and at ``MAX_RATIO`` times the archive's own size (so a
small archive cannot unpack to gigabytes), checked against the sizes the archive declares before
anything is written and again against the bytes actually written while extracting. A refused
archive leaves nothing: it is extracted into a fresh folder that is removed if anything fails.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from batos.errors import BatosError

MAX_MEMBERS = 10_000
MAX_TOTAL_BYTES = 16 * 1024**3
MAX_RATIO = 100  # unpacked bytes per archive byte; model weights compress far less than this
RATIO_FLOOR_BYTES = 64 * 1024**2  # small archives may always unpack to this much


def size_limit(archive_path: Path, max_bytes: int | None) -> int:
    """The most ``archive_path`` may unpack to (see the module docstring)."""
    if max_bytes is None:
        max_bytes = int(os.environ.get("BATOS_MAX_ARCHIVE_BYTES", MAX_TOTAL_BYTES))
    return min(max_bytes, max(RATIO_FLOOR_BYTES, MAX_RATIO * archive_path.stat().st_size))


class UnsafeArchiveError(BatosError, ValueError):
    """The archive is malformed, hostile, or larger than allowed; nothing was extracted."""

    code = "import_failed"


def _check_name(name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"member {name!r} has an absolute path")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"member {name!r} climbs out of the target with '..'")


def _check_totals(count: int, total: int, max_members: int, max_bytes: int) -> None:
    if count > max_members:
        raise UnsafeArchiveError(f"the archive has {count} members; at most {max_members} are allowed")
    if total > max_bytes:
        raise UnsafeArchiveError(f"the archive unpacks to {total} bytes; at most {max_bytes} are allowed")


def _check_tar(archive: tarfile.TarFile, max_members: int, max_bytes: int) -> None:
    members = archive.getmembers()
    _check_totals(len(members), sum(m.size for m in members if m.isfile()), max_members, max_bytes)
    for member in members:
        _check_name(member.name)
        if member.isdev() or member.isfifo():
            raise UnsafeArchiveError(f"member {member.name!r} is a device or FIFO")
        if member.issym() or member.islnk():
            target = PurePosixPath(member.name).parent / member.linkname if member.issym() else PurePosixPath(member.linkname)
            if PurePosixPath(member.linkname).is_absolute() or ".." in PurePosixPath(os.path.normpath(str(target))).parts:
                raise UnsafeArchiveError(f"member {member.name!r} links outside the archive ({member.linkname!r})")


def _check_zip(archive: zipfile.ZipFile, max_members: int, max_bytes: int) -> None:
    infos = archive.infolist()
    _check_totals(len(infos), sum(i.file_size for i in infos), max_members, max_bytes)
    for info in infos:
        _check_name(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"member {info.filename!r} is a symbolic link")
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UnsafeArchiveError(f"member {info.filename!r} is not a regular file")


def _extract_zip(archive: zipfile.ZipFile, destination: Path, max_bytes: int) -> None:
    written = 0
    for info in archive.infolist():
        target = destination / info.filename
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as source, open(target, "wb") as sink:
            while chunk := source.read(1 << 20):
                written += len(chunk)
                if written > max_bytes:  # the sizes in the directory can lie
                    raise UnsafeArchiveError(f"the archive unpacks to more than {max_bytes} bytes")
                sink.write(chunk)


def _extract_tar(archive: tarfile.TarFile, destination: Path, max_bytes: int) -> None:
    written = 0
    for member in archive:
        written += member.size if member.isfile() else 0
        if written > max_bytes:
            raise UnsafeArchiveError(f"the archive unpacks to more than {max_bytes} bytes")
        archive.extract(member, destination, filter="data")


def safe_extract(archive_path: str | os.PathLike, destination: str | os.PathLike,
                 max_members: int = MAX_MEMBERS, max_bytes: int | None = None) -> Path:
    """Extract a tar (any compression) or zip into ``destination``, which must not exist yet."""
    destination = Path(destination)
    if destination.exists():
        raise FileExistsError(f"{destination} already exists")
    archive_path = Path(archive_path)
    max_bytes = size_limit(archive_path, max_bytes)
    try:
        if zipfile.is_zipfile(archive_path):
            with zipfile.ZipFile(archive_path) as archive:
                _check_zip(archive, max_members, max_bytes)
                destination.mkdir(parents=True)
                try:
                    _extract_zip(archive, destination, max_bytes)
                except BaseException:
                    shutil.rmtree(destination, ignore_errors=True)
                    raise
        elif tarfile.is_tarfile(archive_path):
            with tarfile.open(archive_path) as archive:
                _check_tar(archive, max_members, max_bytes)
                destination.mkdir(parents=True)
                try:
                    _extract_tar(archive, destination, max_bytes)
                except (tarfile.FilterError, OSError) as exc:
                    shutil.rmtree(destination, ignore_errors=True)
                    raise UnsafeArchiveError(f"refused while extracting: {exc}") from None
                except BaseException:
                    shutil.rmtree(destination, ignore_errors=True)
                    raise
        else:
            raise UnsafeArchiveError(f"{archive_path.name} is neither a tar nor a zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise UnsafeArchiveError(f"{archive_path.name} is not a readable archive: {exc}") from None
    return destination
