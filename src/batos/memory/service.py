"""Memory's operations: ingest, search, show, list, stats and forget (see IMemoryService).

Ingestion and search run on threads of their own, never on the event loop. A document is
extracted, chunked and embedded before any transaction begins, then recorded in one transaction
(so a crash keeps the whole document or none); unchanged content is recognised by its sha256
before anything is embedded. Search only reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import transaction
from zope.interface import implementer

from batos.errors import BadRequest, NotFound
from batos.image.transactions import read_root, run_in_transaction
from batos.llm.embeddings import DIMENSIONS
from batos.memory.catalog import ROOT_KEY, Catalog, Document
from batos.memory.chunking import Chunk, chunk_text
from batos.memory.extract import DEFAULT_MAX_BYTES
from batos.memory.parsing import PARSE_SECONDS, Parser
from batos.memory.interfaces import IMemoryService
from batos.memory.search import (CANDIDATES, HYBRID_WEIGHTS, VectorIndex, maximal_marginal_relevance,
                                 reciprocal_rank_fusion)
from batos.memory.weaver import weave
from batos.principals import OWNER, Principal

log = logging.getLogger(__name__)

MODES = ("hybrid", "lexical", "vector")
MAX_K = 100
MAX_QUERY_CHARS = 2000
TURN_PREFIX = "conversation:"  # the kernel's: what the mind indexes finished turns under
RECALL_POOL = 20
MIN_RECALL_SIMILARITY = 0.3
Progress = Callable[[dict], None]


@dataclass(frozen=True)
class MemoryPolicy:
    max_bytes: int = DEFAULT_MAX_BYTES
    chunk_words: int = 200
    overlap_words: int = 40
    parse_seconds: float = PARSE_SECONDS  # one document's parsing, in a confined child
    weaver_queue: int = 64  # documents waiting for a summary; beyond it new ones are skipped


@implementer(IMemoryService)
class MemoryService:
    def __init__(self, db, embedder, uploads=None, policy: MemoryPolicy = MemoryPolicy()):
        self.db = db
        self.embedder = embedder
        self.uploads = uploads
        self.policy = policy
        self.vectors = VectorIndex()
        self.parser = Parser()
        self.embedded_chunks = 0  # by this process: a restart starts again at 0
        self._manager = transaction.TransactionManager(explicit=True)
        self._connection = db.open(transaction_manager=self._manager)
        self._write_lock = threading.Lock()
        self._weaving: queue.Queue[str] = queue.Queue(policy.weaver_queue)
        self._weaver = threading.Thread(target=self._weave_forever, name="batos-weaver", daemon=True)
        self._weaver.start()

    # --- the operations, as plain calls -----------------------------------------------------------

    def ingest(self, source: str, data: bytes, progress: Progress | None = None, principal: Principal = OWNER) -> dict:
        """Take one file's content into memory under ``source``, as ``principal``'s document:
        ``{"source", "status", "chunks"}`` with status ``added``, ``replaced`` or ``unchanged``.
        Refused files raise; nothing is written. Another client's document of that source is
        NotFound (it is not this principal's to replace), and TURN_PREFIX is the kernel's."""
        source = _checked_source(source)
        if source.startswith(TURN_PREFIX):
            raise BadRequest(f"sources beginning with {TURN_PREFIX!r} are the kernel's (conversation turns)")
        digest = hashlib.sha256(data).hexdigest()

        def known(catalog: Catalog) -> tuple[str | None, int]:
            document = catalog.documents.get(source)
            if document is not None and not principal.may_see(owner_of(document)):
                raise NotFound(f"no document {source} of yours in memory to replace; ingest it under another name")
            return _digest_and_chunks(catalog, source)
        known, chunks = self._read(known)
        if known == digest:
            return {"source": source, "status": "unchanged", "chunks": chunks}
        parsed = self.parser.parse(source, data, self.policy.max_bytes, self.policy.chunk_words,
                                   self.policy.overlap_words, self.policy.parse_seconds)
        count = self._store(source, digest, parsed.kind, len(data), parsed.chunks, progress, principal)
        return {"source": source, "status": "replaced" if known else "added", "chunks": count}

    def remember(self, source: str, text: str) -> None:
        """Index a conversation turn (``source`` starting with TURN_PREFIX) so it can be recalled."""
        if text.strip():
            data = text.encode()
            self._record(source, hashlib.sha256(data).hexdigest(), "turn", len(data), text, None)

    def recall(self, question: str, part: str, k: int = 3, excluding: str = "",
               allowed: Callable[[str, str | None], bool] | None = None) -> list[dict]:
        """What memory holds on ``question``: hits from ingested documents (``part="documents"``)
        or from past conversation turns (``"turns"``), hybrid-ranked, each at least
        MIN_RECALL_SIMILARITY from the question, so an unrelated chunk is never offered; none
        whose source starts with ``excluding`` (when given), and, when ``allowed`` is given, only
        those for which ``allowed(source, the document's owner)`` holds (whose memory the asker
        may draw on)."""
        def wanted(source: str) -> bool:
            return (source.startswith(TURN_PREFIX) == (part == "turns")
                    and not (excluding and source.startswith(excluding)))
        only = self._chunks_of(allowed) if allowed is not None else None
        hits, similarity = self._ranked(question, RECALL_POOL, "hybrid", only=only)
        return [h for h in hits if wanted(h["source"]) and similarity.get(h["chunk"], 0.0) >= MIN_RECALL_SIMILARITY][:k]

    def _record(self, source: str, digest: str, kind: str, size: int, text: str, progress: Progress | None) -> int:
        """Chunk (here: the kernel's own text, in linear time), embed and store one document."""
        chunks = chunk_text(text, self.policy.chunk_words, self.policy.overlap_words)
        return self._store(source, digest, kind, size, chunks, progress, OWNER)

    def _store(self, source: str, digest: str, kind: str, size: int, chunks: list[Chunk], progress: Progress | None,
               owner: Principal) -> int:
        """Embed and store one document's chunks in one transaction; its chunk count."""
        texts = [c.headed_text() for c in chunks]
        vectors = self._embed(texts, source, progress)
        with self._write_lock:
            document = run_in_transaction(self._manager, lambda: owned(self._catalog().add(
                source, digest, kind, size, chunks, vectors), owner))
            count = len(document.chunk_ids)
        self.embedded_chunks += len(texts)
        if kind != "turn":
            with contextlib.suppress(queue.Full):
                self._weaving.put_nowait(source)
        return count

    def search(self, query: str, k: int = 5, mode: str = "hybrid", diverse: bool = False,
               principal: Principal = OWNER) -> list[dict]:
        """Hits ``{"source", "chunk", "score", "text", "section"}`` among the documents
        ``principal`` may see, best first."""
        if not isinstance(query, str) or not query.strip():
            raise BadRequest("the query is empty")
        if len(query) > MAX_QUERY_CHARS:
            raise BadRequest(f"the query is over {MAX_QUERY_CHARS} characters")
        if mode not in MODES:
            raise BadRequest(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise BadRequest(f"k must be a whole number from 1 to {MAX_K}")
        if principal.is_admin:
            return self._ranked(query, k, mode, diverse)[0]
        only = self._chunks_of(lambda source, owner: principal.may_see(owner))
        return self._ranked(query, k, mode, diverse, only)[0]

    def _chunks_of(self, wanted: Callable[[str, str | None], bool]) -> np.ndarray | None:
        """The sorted chunk ids of the documents for which ``wanted(source, owner)`` holds: what a
        ranking is limited to before it takes its top hits (so others' documents cannot crowd
        out the ones wanted); None when that is every document (the unrestricted ranking is the
        same, and cheaper)."""
        def collect(catalog: Catalog) -> np.ndarray | None:
            ids, everything = [], True
            for source, document in catalog.documents.items():
                if wanted(source, owner_of(document)):
                    ids.extend(document.chunk_ids)
                else:
                    everything = False
            return None if everything else np.unique(np.asarray(ids, dtype=np.int64))
        return self._read(collect)

    def show(self, chunk_id: int, principal: Principal = OWNER) -> dict:
        def find(catalog: Catalog) -> dict:
            record = catalog.chunks.get(chunk_id)
            document = catalog.documents.get(record.source) if record is not None else None
            if document is None or not principal.may_see(owner_of(document)):
                raise NotFound(f"no chunk {chunk_id} in memory")
            ids = document.chunk_ids
            return {"chunk": chunk_id, "text": record.text, "section": record.section, "kind": record.kind,
                    "position": record.position, "document": document.describe(),
                    "previous": ids[record.position - 1] if record.position else None,
                    "next": ids[record.position + 1] if record.position + 1 < len(ids) else None}
        return self._read(find)

    def list(self, principal: Principal = OWNER) -> list[dict]:
        return self._read(lambda catalog: [d.describe() for d in catalog.documents.values()
                                           if principal.may_see(owner_of(d))])

    def stats(self) -> dict:
        def count(catalog: Catalog) -> dict:
            return {"documents": len(catalog.documents), "chunks": len(catalog.chunks),
                    "vectors": sum(s.count for s in catalog.segments.values()),
                    "vector_search": self.vectors.method, "embedded_chunks_this_process": self.embedded_chunks,
                    "lexical_words": catalog.lexicon.wordCount(), "max_bytes": self.policy.max_bytes}
        return self._read(count)

    def forget(self, source: str, principal: Principal = OWNER) -> dict:
        source = _checked_source(source)

        def remove() -> dict:
            catalog = self._catalog()
            if source not in catalog.documents or not principal.may_see(owner_of(catalog.documents[source])):
                raise NotFound(f"no document {source} in memory")
            return {"source": source, "chunks": len(catalog.forget(source).chunk_ids)}
        with self._write_lock:
            return run_in_transaction(self._manager, remove)

    # --- the wire ops ---------------------------------------------------------------------------

    async def op_memory_ingest(self, fields: dict, context) -> dict:
        principal = context.request.principal
        path = self.uploads.finished(fields["upload_id"], principal)
        loop = asyncio.get_running_loop()

        def progress(event: dict) -> None:
            asyncio.run_coroutine_threadsafe(context.emit(event), loop)
        try:
            data = await asyncio.to_thread(_read_at_most, path, self.policy.max_bytes)
            return await asyncio.to_thread(self.ingest, fields["source"], data, progress, principal)
        finally:
            self.uploads.discard(fields["upload_id"], principal)

    async def op_memory_search(self, fields: dict, context) -> list[dict]:
        return await asyncio.to_thread(self.search, fields["query"], fields.get("k", 5),
                                       fields.get("mode", "hybrid"), fields.get("diverse", False), context.request.principal)

    async def op_memory_show(self, fields: dict, context) -> dict:
        return await asyncio.to_thread(self.show, fields["chunk"], context.request.principal)

    async def op_memory_list(self, fields: dict, context) -> list[dict]:
        return await asyncio.to_thread(self.list, context.request.principal)

    async def op_memory_stats(self, fields: dict, context) -> dict:
        return await asyncio.to_thread(self.stats)

    async def op_memory_forget(self, fields: dict, context) -> dict:
        return await asyncio.to_thread(self.forget, fields["source"], context.request.principal)

    # --- inside -----------------------------------------------------------------------------------

    def _ranked(self, query: str, k: int, mode: str, diverse: bool = False,
                only: np.ndarray | None = None) -> tuple[list[dict], dict[int, float]]:
        """The top ``k`` hits (among the chunk ids ``only``, when given), and the cosine
        similarity of the vector side's candidates."""
        if only is not None and not len(only):
            return [], {}
        pending = self.embedder.submit_query(query) if mode != "lexical" else None

        def rank(catalog: Catalog) -> tuple[list[dict], dict[int, float]]:
            # the lexical side runs while the query is embedded on the embedder's thread
            lexical = catalog.lexical_search(query, CANDIDATES, only=only) if mode != "vector" else []
            exact = catalog.lexical_search(query, CANDIDATES, every_word=True, only=only) if mode == "hybrid" else []
            vector: list[tuple[int, float]] = []
            if pending is not None:
                self.vectors.refresh(catalog.version, catalog.all_vectors)
                vector = self.vectors.search(pending.result(), CANDIDATES, only)
            ranked = {"lexical": lexical, "vector": vector}.get(mode) or reciprocal_rank_fusion(
                exact, lexical, vector, weights=HYBRID_WEIGHTS)
            if diverse:
                found = {c: v for c, _ in ranked if (v := self.vectors.vector_of(c)) is not None}
                ranked = maximal_marginal_relevance(ranked, found, k)
            hits = []
            for chunk_id, score in ranked:
                record = catalog.chunks.get(chunk_id)
                if record is not None:
                    hits.append({"source": record.source, "chunk": chunk_id, "score": round(score, 6),
                                 "text": record.text, "section": record.section})
                if len(hits) == k:
                    break
            return hits, dict(vector)
        return self._read(rank)

    def _embed(self, texts: list[str], source: str, progress: Progress | None) -> np.ndarray:
        step = max(self.embedder.batch_size * 4, 1)
        parts = []
        for start in range(0, len(texts), step):
            parts.append(self.embedder.encode(texts[start:start + step]))
            if progress:
                progress({"progress": {"what": f"embedding {os.path.basename(source)}",
                                       "done": min(start + step, len(texts)), "total": len(texts)}})
        return np.concatenate(parts) if parts else np.zeros((0, DIMENSIONS), dtype=np.float32)

    def _catalog(self) -> Catalog:
        return self._connection.root()[ROOT_KEY]

    def _read(self, fn: Callable[[Catalog], Any]) -> Any:
        return read_root(self.db, lambda root: fn(root[ROOT_KEY]))

    def _weave_forever(self) -> None:
        while True:
            source = self._weaving.get()
            if source is None:
                return
            try:
                with self._write_lock:
                    run_in_transaction(self._manager, lambda: weave(self._catalog(), source))
            except Exception:
                log.exception("the knowledge weaver failed on %s", source)

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self._weaving.put_nowait(None)
        self._weaver.join(timeout=5)
        self.parser.close()
        with contextlib.suppress(Exception):
            self._connection.close()


def owner_of(document: Document | None) -> str | None:
    """The key of the principal a document belongs to (None: the image's single owner)."""
    return getattr(document, "owner", None)


def documents_of(owner: str | None) -> Callable[[str, str | None], bool]:
    """The ``allowed`` test of :meth:`MemoryService.recall` that keeps the documents of ``owner``
    (a principal's key; None: the image's single owner) and no one else's."""
    mine = owner or OWNER.key
    return lambda source, document_owner: (document_owner or OWNER.key) == mine


def owned(document: Document, owner: Principal) -> Document:
    document.owner = owner.key
    return document


def _digest_and_chunks(catalog: Catalog, source: str) -> tuple[str | None, int]:
    document: Document | None = catalog.documents.get(source)
    return (document.digest, len(document.chunk_ids)) if document is not None else (None, 0)


def _checked_source(source: Any) -> str:
    if not isinstance(source, str) or not source.strip() or len(source) > 4096 or "\x00" in source:
        raise BadRequest("a source is a path of 1 to 4096 characters")
    return source


def _read_at_most(path, limit: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(limit + 1)  # one byte over is enough to refuse it as too large
