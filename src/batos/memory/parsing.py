"""Parsing a document out of the UVM's process: extraction and chunking in a confined child.

:func:`parse` runs :mod:`batos.memory.parse_child` on one document with a time and memory budget,
and checks what comes back before the UVM uses it: a list of chunks of plain strings and integers,
no bigger than the document could make. A child that overruns its time is killed, and the
document is refused; the UVM's threads only wait on a pipe meanwhile.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import ormsgpack

from batos.errors import BadRequest, TooLarge
from batos.memory.chunking import Chunk

PARSE_SECONDS = 60.0
PARSE_MEMORY_BYTES = 1024**3
MAX_ANSWER_BYTES = 64 * 1024**2
CHUNK_KINDS = ("prose", "code")


@dataclass(frozen=True)
class Parsed:
    kind: str
    chunks: list[Chunk]


def parse(name: str, data: bytes, max_bytes: int, chunk_words: int, overlap_words: int,
          seconds: float = PARSE_SECONDS, memory_bytes: int = PARSE_MEMORY_BYTES) -> Parsed:
    """The document's kind and chunks, parsed in a confined child; the refusal it reports, or
    ``bad_request`` when it overruns ``seconds`` or fails."""
    job = ormsgpack.packb({"name": name, "data": data, "max_bytes": max_bytes,
                           "chunk_words": chunk_words, "overlap_words": overlap_words})
    limits = json.dumps({"memory_bytes": memory_bytes, "cpu_seconds": int(seconds) + 1})
    with tempfile.TemporaryDirectory(prefix="batos-parse-") as folder:
        child = subprocess.Popen([sys.executable, "-I", "-m", "batos.memory.parse_child", limits], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=folder, env={},
                                 start_new_session=True)
        try:
            output = _exchange(child, job, time.monotonic() + seconds)
        except TimeoutError:
            raise BadRequest(f"{name}: parsing it took longer than {seconds:g} s; it is not taken") from None
        except OverflowError:
            raise TooLarge(f"{name}: it makes more than {MAX_ANSWER_BYTES} bytes of text; memory takes less from one file") from None
        finally:
            child.kill()
            child.wait()
    try:
        answer = ormsgpack.unpackb(output)
    except (ormsgpack.MsgpackDecodeError, ValueError, TypeError):
        answer = None
    if not isinstance(answer, dict):
        raise BadRequest(f"{name}: it could not be parsed (the parser ended with {child.returncode})")
    if not answer.get("ok"):
        code = answer.get("code") if answer.get("code") in ("bad_request", "too_large") else "bad_request"
        raise (TooLarge if code == "too_large" else BadRequest)(str(answer.get("error", "refused"))[:2000])
    return Parsed(_checked_kind(answer.get("kind")), _checked_chunks(answer.get("chunks")))


def _exchange(child: subprocess.Popen, job: bytes, deadline: float) -> bytes:
    """Write ``job`` to the child and read its whole answer, by ``deadline`` (TimeoutError) and at
    most MAX_ANSWER_BYTES (OverflowError)."""
    writer = threading.Thread(target=_feed, args=(child.stdin, job), daemon=True)
    writer.start()
    parts, size, fd = [], 0, child.stdout.fileno()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise TimeoutError
        part = os.read(fd, 1 << 20)
        if not part:
            return b"".join(parts)
        size += len(part)
        if size > MAX_ANSWER_BYTES:
            raise OverflowError
        parts.append(part)


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except OSError:  # the child is gone: its answer (or its absence) says why
        pass


def _checked_kind(kind: object) -> str:
    if kind not in ("text", "markdown", "html", "pdf", "source"):
        raise BadRequest("the document parser answered an unknown kind")
    return kind


def _checked_chunks(chunks: object) -> list[Chunk]:
    """Chunks as the parser sent them, if each is well formed."""
    if not isinstance(chunks, list):
        raise BadRequest("the document parser answered malformed chunks")
    checked = []
    for chunk in chunks:
        if not (isinstance(chunk, list) and len(chunk) == 4 and isinstance(chunk[0], str) and isinstance(chunk[1], str)
                and isinstance(chunk[2], int) and not isinstance(chunk[2], bool) and chunk[3] in CHUNK_KINDS):
            raise BadRequest("the document parser answered a malformed chunk")
        checked.append(Chunk(chunk[0], chunk[1], chunk[2], chunk[3]))
    return checked
