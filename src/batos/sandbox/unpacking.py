"""Unpacking an archive that may be hostile: read in a confined process, written here.

:func:`safe_extract` starts :mod:`batos.sandbox.unpack_child` for one archive, hands it the
archive as an open file and writes what it sends into a new folder, after checking each member's
name again (:mod:`batos.image.archives`), counting members and bytes, and keeping every path inside
the folder. Only folders and regular files are made. The reader has a memory and CPU budget, must
send something at least every ``FRAME_SECONDS`` and finish within ``READER_SECONDS``; whatever
goes wrong, the folder is removed and nothing is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from batos.image.archives import MAX_MEMBERS, UnsafeArchiveError, check_name, size_limit
from batos.sandbox.channel import Channel, ChannelError, ChannelTimeout
from batos.sandbox.confine import SANDBOX_UID

FRAME_SECONDS = 60.0
READER_SECONDS = 3600.0  # an archive of the largest size allowed unpacks in minutes
READER_MEMORY_BYTES = 1024**3
READER_CPU_SECONDS = 1800
MAX_FRAME = 2 * 1024**2  # a data frame carries at most a mebibyte


def safe_extract(archive_path: str | os.PathLike, destination: str | os.PathLike,
                 max_members: int = MAX_MEMBERS, max_bytes: int | None = None) -> Path:
    """Extract a tar (any compression) or zip into ``destination``, which must not exist yet;
    UnsafeArchiveError, leaving nothing, when it is refused."""
    destination = Path(destination)
    if destination.exists():
        raise FileExistsError(f"{destination} already exists")
    archive_path = Path(archive_path)
    max_bytes = size_limit(archive_path, max_bytes)
    destination.mkdir(parents=True)  # FileExistsError should it have appeared meanwhile: nothing to undo
    archive_fd, folder, reader = -1, None, None
    try:
        archive_fd = os.open(archive_path, os.O_RDONLY | os.O_CLOEXEC)
        folder = tempfile.mkdtemp(prefix="batos-unpack-")
        limits = {"archive_fd": archive_fd, "max_frame": MAX_FRAME, "memory_bytes": READER_MEMORY_BYTES,
                  "cpu_seconds": READER_CPU_SECONDS, "uid": SANDBOX_UID, "max_members": max_members,
                  "max_bytes": max_bytes}
        reader = subprocess.Popen([sys.executable, "-I", "-m", "batos.sandbox.unpack_child", json.dumps(limits)],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  pass_fds=(archive_fd,), cwd=folder, env={}, start_new_session=True)
        os.close(archive_fd)
        archive_fd = -1
        _write_members(Channel(reader.stdout.fileno(), -1, MAX_FRAME), destination, max_members, max_bytes)
    except UnsafeArchiveError as exc:
        shutil.rmtree(destination, ignore_errors=True)
        raise UnsafeArchiveError(f"{archive_path.name}: {exc}") from None
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise
    finally:
        if archive_fd >= 0:
            os.close(archive_fd)
        if reader is not None:
            _stop(reader)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return destination


def _write_members(channel: Channel, destination: Path, max_members: int, max_bytes: int) -> None:
    count = written = 0
    sink: BinaryIO | None = None
    finish_by = time.monotonic() + READER_SECONDS
    try:
        while True:
            try:
                frame = channel.receive(min(time.monotonic() + FRAME_SECONDS, finish_by))
            except ChannelTimeout:
                raise UnsafeArchiveError(f"the archive reader sent nothing for {FRAME_SECONDS:g} s, "
                                         f"or took more than {READER_SECONDS:g} s in all") from None
            except ChannelError as exc:
                raise UnsafeArchiveError(f"the archive reader failed ({exc})") from None
            kind = frame.get("t") if isinstance(frame, dict) else None
            if kind == "done":
                return
            if kind == "error":
                raise UnsafeArchiveError(str(frame.get("message", "refused"))[:2000])
            if kind == "data" and sink is not None and isinstance(frame.get("b"), bytes):
                written += len(frame["b"])
                if written > max_bytes:
                    raise UnsafeArchiveError(f"the archive unpacks to more than {max_bytes} bytes")
                sink.write(frame["b"])
                continue
            if kind not in ("dir", "file"):
                raise UnsafeArchiveError("the archive reader broke the protocol")
            count += 1
            if count > max_members:
                raise UnsafeArchiveError(f"the archive has more than {max_members} members")
            if sink is not None:
                sink.close()
                sink = None
            path = member_path(destination, frame.get("name"), kind == "dir")
            if kind == "dir":
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                sink = open(path, "wb")
    except OSError as exc:  # a file where a folder must go, or the other way round
        raise UnsafeArchiveError(f"a member cannot be written ({exc.strerror})") from None
    finally:
        if sink is not None:
            sink.close()


def member_path(destination: Path, name: object, folder: bool) -> Path:
    """Where member ``name`` goes: inside ``destination``, whatever the name says (``./`` parts
    are dropped; the archive's own top folder is ``destination``)."""
    if not isinstance(name, str) or "\0" in name:
        raise UnsafeArchiveError(f"a member has no usable name ({str(name)[:80]!r})")
    check_name(name)
    parts = [part for part in PurePosixPath(name).parts if part not in (".", "/")]
    if not parts:
        if folder:
            return destination
        raise UnsafeArchiveError(f"a file member has no name ({name[:80]!r})")
    if name.endswith("/") and not folder:
        raise UnsafeArchiveError(f"member {name!r} names a folder but holds a file")
    path = destination.joinpath(*parts)
    if not os.path.realpath(path).startswith(os.path.realpath(destination) + os.sep):
        raise UnsafeArchiveError(f"member {name!r} would be written outside the target")
    return path


def _stop(reader: subprocess.Popen) -> None:
    try:
        os.killpg(reader.pid, signal.SIGKILL)
    except OSError:
        pass
    reader.wait()
    reader.stdout.close()
