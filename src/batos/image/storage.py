"""Opening storages by URI.

Every storage BatOS uses is named by a zodburi URI and opened through :func:`open_database`.
A bare path means ``file://PATH``; a ``file://`` URI keeps its blobs in ``PATH.blob/`` unless its
query names ``blobstorage_dir``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

import zc.lockfile
import zodburi
import ZODB

DEFAULT_IMAGE = "file://live_image.fs"


class ImageError(Exception):
    """The image cannot be opened as asked."""


class ImageLockedError(ImageError):
    """Another live process holds the image's lock."""

    def __init__(self, path: str, pid: int | None):
        self.path = path
        self.pid = pid
        holder = f"process {pid}" if pid else "another process"
        super().__init__(
            f"the image {path} is in use by {holder} (lock file {path}.lock); "
            f"stop that process first, or open another image"
        )


@dataclass(frozen=True)
class StorageURI:
    """A normalized storage URI and, for file storages, the data file's path."""

    uri: str
    file_path: str | None
    blob_dir: str | None


def normalize_uri(uri: str | None) -> StorageURI:
    """Return the canonical form of ``uri`` (``None`` means the default image)."""
    uri = (uri or DEFAULT_IMAGE).strip()
    if not uri:
        raise ImageError("an empty image URI names no storage")
    if "://" not in uri:
        uri = "file://" + uri
    if not uri.startswith("file://"):
        return StorageURI(uri=uri, file_path=None, blob_dir=None)
    rest = uri[len("file://"):]
    path, _, query = rest.partition("?")
    if not path:
        raise ImageError(f"{uri!r} names no file")
    params = dict(parse_qsl(query))
    params.setdefault("blobstorage_dir", path + ".blob")
    return StorageURI(
        uri=f"file://{path}?{urlencode(params)}",
        file_path=path,
        blob_dir=params["blobstorage_dir"],
    )


def lock_holder_pid(file_path: str) -> int | None:
    """The PID written in ``file_path``'s lock file, if one can be read."""
    try:
        with open(file_path + ".lock") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pid_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_database(uri: str | None = None, **db_kw) -> ZODB.DB:
    """Open the storage named by ``uri`` and return a ZODB.DB over it.

    Raises ImageLockedError when a live process holds a file storage's lock; a lock file left by
    a dead process is no obstacle (the lock is an fcntl lock, gone with its process).
    """
    target = normalize_uri(uri)
    if target.file_path:
        parent = os.path.dirname(os.path.abspath(target.file_path))
        if not os.path.isdir(parent):
            raise ImageError(f"the folder {parent} for image {target.file_path} does not exist")
    try:
        factory, uri_db_kw = zodburi.resolve_uri(target.uri)
    except KeyError as exc:
        raise ImageError(f"cannot open {target.uri!r}: {exc.args[0] if exc.args else exc}") from exc
    try:
        storage = factory()
    except zc.lockfile.LockError as exc:
        raise ImageLockedError(target.file_path or target.uri, lock_holder_pid(target.file_path or "")) from exc
    uri_db_kw.update(db_kw)
    return ZODB.DB(storage, **uri_db_kw)
