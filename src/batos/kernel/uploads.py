"""Files streamed to the UVM in chunks (models, adapters and documents named on a client's command
line). An upload belongs to the principal that sent it: another cannot add to it, use it or see
it. A user's uploads together may hold at most USER_QUOTA_BYTES; an upload untouched for
STALE_SECONDS is removed."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from pathlib import Path

from batos.kernel.protocol import Code, ProtocolError
from batos.principals import OWNER, Principal

UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_UPLOAD_BYTES = 64 * 1024**3  # an admin's upload (a model)
USER_QUOTA_BYTES = 1024**3  # all of a user's uploads at once
STALE_SECONDS = 3600
CLEAN_EVERY_SECONDS = 60.0


class Uploads:
    """Chunks appended in order to one file per upload id, under ``folder``/the principal's folder."""

    def __init__(self, folder: str | os.PathLike, user_quota: int = USER_QUOTA_BYTES):
        self.folder = Path(folder)
        self.user_quota = user_quota
        self._cleaned = 0.0

    def path(self, upload_id: str, principal: Principal = OWNER) -> Path:
        if not UPLOAD_ID.fullmatch(upload_id):
            raise ProtocolError(Code.BAD_REQUEST, "upload_id must be 1 to 64 letters, digits, '-' or '_'")
        return self._folder_of(principal) / upload_id

    def _folder_of(self, principal: Principal) -> Path:
        return self.folder / hashlib.sha256(principal.key.encode()).hexdigest()[:24]

    def append(self, upload_id: str, offset: int, data: bytes, principal: Principal = OWNER) -> int:
        """Add ``data`` at ``offset`` (which must be the current size); return the new size."""
        if time.monotonic() - self._cleaned > CLEAN_EVERY_SECONDS:
            self.clean_stale()
        path = self.path(upload_id, principal)
        path.parent.mkdir(parents=True, exist_ok=True)
        size = path.stat().st_size if path.exists() else 0
        if offset != size:
            raise ProtocolError(Code.BAD_REQUEST, f"upload {upload_id} has {size} bytes; a chunk at offset {offset} does not follow")
        if size + len(data) > MAX_UPLOAD_BYTES:
            raise ProtocolError(Code.TOO_LARGE, f"uploads are limited to {MAX_UPLOAD_BYTES} bytes")
        if not principal.is_admin and self._held_by(principal) + len(data) > self.user_quota:
            raise ProtocolError(Code.TOO_LARGE, f"your uploads would hold more than {self.user_quota} bytes at once; "
                                "finish or wait for the ones in progress (an unfinished upload goes after an hour)")
        with open(path, "ab") as f:
            f.write(data)
        return size + len(data)

    def _held_by(self, principal: Principal) -> int:
        folder = self._folder_of(principal)
        return sum(entry.stat().st_size for entry in folder.iterdir()) if folder.is_dir() else 0

    def finished(self, upload_id: str, principal: Principal = OWNER) -> Path:
        path = self.path(upload_id, principal)
        if not path.exists():
            raise ProtocolError(Code.NOT_FOUND, f"no upload {upload_id}")
        return path

    def discard(self, upload_id: str, principal: Principal = OWNER) -> None:
        self.path(upload_id, principal).unlink(missing_ok=True)

    def clean_stale(self) -> None:
        """Remove every upload untouched for STALE_SECONDS."""
        self._cleaned = time.monotonic()
        if not self.folder.is_dir():
            return
        limit = time.time() - STALE_SECONDS
        for folder in self.folder.iterdir():
            for entry in folder.iterdir() if folder.is_dir() else [folder]:
                if entry.stat().st_mtime < limit:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)
