"""Logging for the UVM: readable lines on the console, one JSON object a line in a file.

Records of the ``batos.messages`` logger (one per message handled) go to the file only; they carry
their fields in ``record.fields``.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time

MESSAGES_LOGGER = "batos.messages"
BATCH_SECONDS = 0.1


class JsonLinesFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class BatchingFileHandler(logging.Handler):
    """Appends formatted records to a file from a thread of its own, one flush per batch.

    ``emit`` only queues the record, so the thread that logs (the event loop, on every message)
    pays for neither formatting nor the write. Records still queued when the process is killed
    are lost; everything queued before ``close`` is written.
    """

    def __init__(self, path: str):
        super().__init__()
        self._file = open(path, "a", encoding="utf-8")
        self._queue: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._closing = False
        self._writer = threading.Thread(target=self._write_batches, name="batos-log-writer", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        self._queue.append(record)
        self._wake.set()

    def _write_batches(self) -> None:
        while True:
            self._wake.wait()
            if not self._closing:
                time.sleep(BATCH_SECONDS)  # gather a batch: one wake-up and one write per interval
            self._wake.clear()
            lines = []
            while self._queue:
                record = self._queue.popleft()
                try:
                    lines.append(self.format(record) + "\n")
                except Exception:
                    self.handleError(record)
            if lines:
                self._file.write("".join(lines))
                self._file.flush()
            if self._closing and not self._queue:
                return

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._wake.set()
            self._writer.join(10)
            self._file.close()
        super().close()


class _NotMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != MESSAGES_LOGGER


def configure(log_file: str | None, level: str = "INFO") -> None:
    """Install the console handler and, unless ``log_file`` is falsy, the JSON-lines file."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    console = logging.StreamHandler()
    console.setLevel(level.upper())
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    console.addFilter(_NotMessages())
    root.addHandler(console)
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        to_file = BatchingFileHandler(log_file)
        to_file.setLevel(logging.INFO)
        to_file.setFormatter(JsonLinesFormatter())
        root.addHandler(to_file)
    for noisy in ("ZODB", "txn", "transaction", "zc.lockfile"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
