"""Files streamed to the UVM in chunks (models and adapters named on a client's command line)."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from batos.kernel.protocol import Code, ProtocolError

UPLOAD_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_UPLOAD_BYTES = 64 * 1024**3
STALE_SECONDS = 24 * 3600


class Uploads:
    """Chunks appended in order to one file per upload id, under ``folder``."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def path(self, upload_id: str) -> Path:
        if not UPLOAD_ID.fullmatch(upload_id):
            raise ProtocolError(Code.BAD_REQUEST, "upload_id must be 1 to 64 letters, digits, '-' or '_'")
        return self.folder / upload_id

    def append(self, upload_id: str, offset: int, data: bytes) -> int:
        """Add ``data`` at ``offset`` (which must be the current size); return the new size."""
        path = self.path(upload_id)
        self.folder.mkdir(parents=True, exist_ok=True)
        size = path.stat().st_size if path.exists() else 0
        if offset != size:
            raise ProtocolError(Code.BAD_REQUEST, f"upload {upload_id} has {size} bytes; a chunk at offset {offset} does not follow")
        if size + len(data) > MAX_UPLOAD_BYTES:
            raise ProtocolError(Code.BAD_REQUEST, f"uploads are limited to {MAX_UPLOAD_BYTES} bytes")
        with open(path, "ab") as f:
            f.write(data)
        return size + len(data)

    def finished(self, upload_id: str) -> Path:
        path = self.path(upload_id)
        if not path.exists():
            raise ProtocolError(Code.NOT_FOUND, f"no upload {upload_id}")
        return path

    def discard(self, upload_id: str) -> None:
        self.path(upload_id).unlink(missing_ok=True)

    def clean_stale(self) -> None:
        if not self.folder.is_dir():
            return
        limit = time.time() - STALE_SECONDS
        for entry in self.folder.iterdir():
            if entry.stat().st_mtime < limit:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
