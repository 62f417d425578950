"""Parsing a document out of the UVM's process: extraction and chunking in a confined worker.

:class:`Parser` keeps one warm parse worker (:mod:`batos.memory.parse_child`, a zygote confined
like the method workers, started by the same pool) and gives it one document at a time, with a
time budget; each document is parsed in a fresh child that is gone afterwards. What comes back is
checked before the UVM uses it: chunks of plain strings and integers, the call's nonce. A worker
that overruns its time, breaks the protocol or sends too much is killed and replaced; the
document is refused. The UVM's threads only wait on a pipe meanwhile.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

from batos.errors import BadRequest, TooLarge
from batos.memory.chunking import Chunk
from batos.sandbox.channel import ChannelError, ChannelTimeout, FrameTooLarge
from batos.sandbox.pool import SandboxLimits, SandboxPool

PARSE_SECONDS = 60.0
PARSE_MEMORY_BYTES = 1024**3
MAX_ANSWER_BYTES = 64 * 1024**2
CHUNK_KINDS = ("prose", "code")
KINDS = ("text", "markdown", "html", "pdf", "source")


@dataclass(frozen=True)
class Parsed:
    kind: str
    chunks: list[Chunk]


class Parser:
    """A warm, confined parse worker (started on first use) and the rules of its answers."""

    def __init__(self, memory_bytes: int = PARSE_MEMORY_BYTES):
        self.pool = SandboxPool(1, SandboxLimits(memory_bytes=memory_bytes, max_frame=MAX_ANSWER_BYTES),
                                argv=("-m", "batos.memory.parse_child"))
        self._started = False
        self._lock = threading.Lock()

    def parse(self, name: str, data: bytes, max_bytes: int, chunk_words: int, overlap_words: int,
              seconds: float = PARSE_SECONDS) -> Parsed:
        """The document's kind and chunks; the refusal the parser reports, or ``bad_request`` when
        it overruns ``seconds`` or fails."""
        with self._lock:
            if not self._started:
                self.pool.start()
                self._started = True
        try:
            worker = self.pool.checkout(timeout=START_SECONDS)
        except TimeoutError as exc:
            raise BadRequest(f"{name}: no document parser is available ({exc})") from None
        nonce = secrets.token_hex(16)
        answered = False
        try:
            worker.channel.send({"t": "parse", "n": nonce, "name": name, "data": data, "max_bytes": max_bytes,
                                 "chunk_words": chunk_words, "overlap_words": overlap_words})
            answer = worker.channel.receive(time.monotonic() + seconds)
            if not isinstance(answer, dict) or answer.get("t") != "done" or answer.get("n") != nonce:
                raise BadRequest(f"{name}: it could not be parsed (the parser broke the protocol)")
            answered = True
        except ChannelTimeout:
            raise BadRequest(f"{name}: parsing it took longer than {seconds:g} s; it is not taken") from None
        except FrameTooLarge:
            raise TooLarge(f"{name}: it makes more than {MAX_ANSWER_BYTES} bytes of text; memory takes less from one file") from None
        except (ChannelError, OSError):
            raise BadRequest(f"{name}: it could not be parsed (the parser died)") from None
        finally:
            (self.pool.checkin if answered else self.pool.discard)(worker)
        if not answer.get("ok"):
            kind = TooLarge if answer.get("code") == "too_large" else BadRequest
            raise kind(str(answer.get("error", "refused"))[:2000])
        return Parsed(_checked_kind(answer.get("kind")), _checked_chunks(answer.get("chunks")))

    def close(self) -> None:
        self.pool.close()


START_SECONDS = 60.0  # the first document waits for the parse worker to start

_default: Parser | None = None
_default_lock = threading.Lock()


def parse(name: str, data: bytes, max_bytes: int, chunk_words: int, overlap_words: int,
          seconds: float = PARSE_SECONDS) -> Parsed:
    """:meth:`Parser.parse` on this process's own parser (tests, benchmarks)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Parser()
    return _default.parse(name, data, max_bytes, chunk_words, overlap_words, seconds)


def _checked_kind(kind: object) -> str:
    if kind not in KINDS:
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
