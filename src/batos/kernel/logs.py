"""Logging for the UVM: readable lines on the console, one JSON object a line in a file.

Records of the ``batos.messages`` logger (one per message handled) go to the file only; they carry
their fields in ``record.fields``.
"""

from __future__ import annotations

import json
import logging
import os
import time

MESSAGES_LOGGER = "batos.messages"


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
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setLevel(logging.INFO)
        to_file.setFormatter(JsonLinesFormatter())
        root.addHandler(to_file)
    for noisy in ("ZODB", "txn", "transaction", "zc.lockfile"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
