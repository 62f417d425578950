"""The process a hostile archive is read in: ``python -I -m batos.sandbox.unpack_child LIMITS``.

It is given the archive as an open file descriptor (``LIMITS["archive_fd"]``) and its answer pipe
as standard output. It loads the archive readers (tar with every compression, zip), confines itself
as a sandbox worker does (:func:`batos.sandbox.confine.confine`: no file can be opened or written,
no network, no privilege, the system-call allow-list), checks the archive's directory
(:mod:`batos.image.archives`: names, links, member count, declared sizes) and sends its members as
frames:

- ``{"t": "dir", "name"}`` for a folder;
- ``{"t": "file", "name"}`` for a file (a link inside the archive: the file it names), followed by
  ``{"t": "data", "b"}`` frames of at most a mebibyte;
- last, ``{"t": "done"}``, or ``{"t": "error", "message"}`` with why the archive is refused.

Decompression and the archive formats' parsing happen here only; the UVM writes what it is sent
after checking it again (:mod:`batos.sandbox.unpacking`).
"""

from __future__ import annotations

import bz2  # noqa: F401  (loaded before confinement: tar's compressions)
import json
import lzma  # noqa: F401
import os
import sys
import tarfile
import zipfile
import zlib  # noqa: F401
from typing import BinaryIO, Iterator

from batos.image.archives import UnsafeArchiveError, check_tar, check_zip
from batos.sandbox.channel import Channel
from batos.sandbox.confine import confine, load_libseccomp

PIECE_BYTES = 1 << 20


def members(archive: BinaryIO, max_members: int, max_bytes: int) -> Iterator[tuple[str, str, BinaryIO | None]]:
    """(kind, name, reader) of each member to write, once the directory is checked."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as unzipped:
            check_zip(unzipped, max_members, max_bytes)
            for info in unzipped.infolist():
                if info.is_dir():
                    yield "dir", info.filename, None
                else:
                    with unzipped.open(info) as reader:
                        yield "file", info.filename, reader
        return
    archive.seek(0)
    try:
        untarred = tarfile.open(fileobj=archive, mode="r:*")
    except tarfile.ReadError:
        raise UnsafeArchiveError("the file is neither a tar nor a zip archive") from None
    with untarred:
        check_tar(untarred, max_members, max_bytes)
        for member in untarred.getmembers():
            if member.isdir():
                yield "dir", member.name, None
            elif member.isfile() or member.islnk() or member.issym():
                reader = untarred.extractfile(member)
                if reader is None:
                    raise UnsafeArchiveError(f"member {member.name!r} links to nothing in the archive")
                yield "file", member.name, reader


def send_members(archive: BinaryIO, out: Channel, max_members: int, max_bytes: int) -> None:
    written = 0
    for kind, name, reader in members(archive, max_members, max_bytes):
        out.send({"t": kind, "name": name})
        while reader is not None and (piece := reader.read(PIECE_BYTES)):
            written += len(piece)
            if written > max_bytes:  # the sizes an archive declares can lie
                raise UnsafeArchiveError(f"the archive unpacks to more than {max_bytes} bytes")
            out.send({"t": "data", "b": piece})
    out.send({"t": "done"})


def warm_up() -> None:
    """Write and read a small archive of each kind, so that what the readers load lazily (gzip,
    codecs for member names) is loaded while files can still be opened."""
    import io

    for mode in ("w", "w:gz", "w:bz2", "w:xz"):
        packed = io.BytesIO()
        with tarfile.open(fileobj=packed, mode=mode) as tar:
            info = tarfile.TarInfo("a/é.txt")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        packed.seek(0)
        list(members(packed, 10, 100))
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        packed = io.BytesIO()
        with zipfile.ZipFile(packed, "w", compression=method) as zipped:
            zipped.writestr("a/é.txt", "x")
            zipped.writestr("plain.txt", "x")
        packed.seek(0)
        for _, _, reader in members(packed, 10, 100):
            if reader is not None:
                reader.read()


def main() -> None:
    limits = json.loads(sys.argv[1])
    out = Channel(-1, os.dup(1), limits["max_frame"])
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    archive = os.fdopen(limits["archive_fd"], "rb")
    warm_up()
    applied, missing = confine(limits["memory_bytes"], limits["cpu_seconds"], 8, limits["uid"], load_libseccomp())
    if "seccomp" not in applied:
        out.send({"t": "error", "message": f"the archive reader could not confine itself: {'; '.join(missing)}"})
        return
    try:
        send_members(archive, out, limits["max_members"], limits["max_bytes"])
    except UnsafeArchiveError as exc:
        out.send({"t": "error", "message": str(exc)})
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError) as exc:
        out.send({"t": "error", "message": f"the archive is damaged ({type(exc).__name__}: {str(exc)[:300]})"})
    except MemoryError:
        out.send({"t": "error", "message": "reading the archive needs more memory than allowed"})


if __name__ == "__main__":
    main()
