"""What an archive that may be hostile must be, before anything of it is written.

Every archive BatOS unpacks is read in a confined process (:mod:`batos.sandbox.unpack_child`) and
written by :func:`batos.sandbox.unpacking.safe_extract`; both apply these rules. A member that is
absolute, climbs out with ``..``, is a device or FIFO, or (in a tar) links outside the archive is
refused, and so is a zip member that is a symbolic link. The member count and the total unpacked
size are capped: the total at ``max_bytes`` (``BATOS_MAX_ARCHIVE_BYTES``) and at ``MAX_RATIO``
times the archive's own size (so a small archive cannot unpack to gigabytes), checked against the
sizes the archive declares before anything is written and again against the bytes actually
written.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from batos.errors import BatosError

MAX_MEMBERS = 10_000
MAX_DEPTH = 64  # folders in a member's path
MAX_NAME_CHARS = 4096
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


def check_name(name: str) -> None:
    if len(name) > MAX_NAME_CHARS or name.replace("\\", "/").count("/") > MAX_DEPTH:
        raise UnsafeArchiveError(f"member {name[:80]!r}... is nested deeper or named longer than allowed")
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


def check_tar(archive: tarfile.TarFile, max_members: int, max_bytes: int) -> None:
    members = archive.getmembers()
    _check_totals(len(members), sum(m.size for m in members if m.isfile()), max_members, max_bytes)
    for member in members:
        check_name(member.name)
        if member.isdev() or member.isfifo():
            raise UnsafeArchiveError(f"member {member.name!r} is a device or FIFO")
        if member.issym() or member.islnk():
            target = PurePosixPath(member.name).parent / member.linkname if member.issym() else PurePosixPath(member.linkname)
            if PurePosixPath(member.linkname).is_absolute() or ".." in PurePosixPath(os.path.normpath(str(target))).parts:
                raise UnsafeArchiveError(f"member {member.name!r} links outside the archive ({member.linkname!r})")


def check_zip(archive: zipfile.ZipFile, max_members: int, max_bytes: int) -> None:
    infos = archive.infolist()
    _check_totals(len(infos), sum(i.file_size for i in infos), max_members, max_bytes)
    for info in infos:
        check_name(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"member {info.filename!r} is a symbolic link")
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UnsafeArchiveError(f"member {info.filename!r} is not a regular file")
