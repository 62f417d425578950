"""The knowledge catalog in the image: documents, chunks, a lexical index and vectors.

``root["knowledge_catalog"]`` is one ``Catalog``. A ``Document`` per source keeps the content's
sha256, and its chunks are ``ChunkRecord`` objects in an IOBTree keyed by integer id. The lexical
index is zope.index's Okapi BM25 over the chunks' text (BM25 rather than the cosine TextIndex
because chunks differ in length and BM25 normalizes for length and saturates repeated words,
which suits short questions). Vectors are kept in ``VectorSegment`` blobs, one per ingestion
transaction, each an ``.npz`` of ids and float32 rows, never one pickle per vector.

Every change a document makes (its record, chunks, index entries and vectors) is made in one
transaction by the caller, so a crash leaves the whole document or none of it.
"""

from __future__ import annotations

import io
import time
from typing import Iterable

import numpy as np
import persistent
from BTrees.IIBTree import IIBTree, IISet, intersection
from BTrees.IOBTree import IOBTree
from BTrees.OOBTree import OOBTree
from ZODB.blob import Blob
from zope.index.text.baseindex import inverse_doc_frequency
from zope.index.text.lexicon import CaseNormalizer, Lexicon, Splitter, StopWordRemover
from zope.index.text.okapiindex import OkapiIndex
from zope.index.text.setops import mass_weightedUnion

from batos.image.genesis import Furnishing
from batos.llm.embeddings import DIMENSIONS
from batos.memory.chunking import Chunk

ROOT_KEY = "knowledge_catalog"
_SPLITTER = Splitter()


class ChunkRecord(persistent.Persistent):
    def __init__(self, chunk_id: int, source: str, position: int, chunk: Chunk):
        self.chunk_id = chunk_id
        self.source = source
        self.position = position  # its place among its document's chunks
        self.text = chunk.text
        self.section = chunk.section
        self.start = chunk.start
        self.kind = chunk.kind



class Document(persistent.Persistent):
    owner: str | None = None  # the key of the principal it belongs to; None: the image's single owner

    def __init__(self, source: str, digest: str, kind: str, size: int, chunk_ids: list[int], segment: int):
        self.source = source
        self.digest = digest
        self.kind = kind
        self.size = size
        self.chunk_ids = tuple(chunk_ids)
        self.segment = segment  # id of the VectorSegment holding its vectors
        self.ingested_at = time.time()
        self.summary = ""  # the knowledge weaver's, once it has run
        self.links: tuple[tuple[str, float], ...] = ()  # (source, similarity) of the closest documents
        self.centre: bytes | None = None  # its unit mean vector, float32

    def describe(self) -> dict:
        return {"source": self.source, "digest": self.digest, "kind": self.kind, "bytes": self.size,
                "chunks": len(self.chunk_ids), "ingested_at": self.ingested_at, "summary": self.summary,
                "links": [{"source": s, "similarity": round(sim, 4)} for s, sim in self.links]}


class VectorSegment(persistent.Persistent):
    """Rows of unit vectors with their chunk ids, stored in one blob."""

    def __init__(self, segment_id: int, ids: np.ndarray, vectors: np.ndarray):
        self.segment_id = segment_id
        self.count = len(ids)
        self.blob = Blob()
        with self.blob.open("w") as f:
            np.savez(f, ids=ids.astype(np.int64), vectors=vectors.astype(np.float32))

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        with self.blob.open("r") as f:
            data = np.load(io.BytesIO(f.read()))
            return data["ids"], data["vectors"]


class Catalog(persistent.Persistent):
    def __init__(self) -> None:
        self.documents = OOBTree()  # source -> Document
        self.chunks = IOBTree()  # chunk id -> ChunkRecord
        self.segments = IOBTree()  # segment id -> VectorSegment
        self.lexicon = Lexicon(Splitter(), CaseNormalizer(), StopWordRemover())
        self.lexical = OkapiIndex(self.lexicon)
        self.next_chunk = 1
        self.next_segment = 1
        self.version = 0  # changes whenever vectors are added or removed

    # --- writing (the caller commits) ------------------------------------------------------------

    def add(self, source: str, digest: str, kind: str, size: int, chunks: list[Chunk],
            vectors: np.ndarray) -> Document:
        """Record a document, replacing any earlier one of that source."""
        if source in self.documents:
            self.forget(source)
        ids = list(range(self.next_chunk, self.next_chunk + len(chunks)))
        self.next_chunk += len(chunks)
        for position, (chunk_id, chunk) in enumerate(zip(ids, chunks)):
            record = ChunkRecord(chunk_id, source, position, chunk)
            self.chunks[chunk_id] = record
            self.lexical.index_doc(chunk_id, chunk.headed_text())
        segment_id = self.next_segment
        self.next_segment += 1
        self.segments[segment_id] = VectorSegment(segment_id, np.array(ids), vectors)
        document = Document(source, digest, kind, size, ids, segment_id)
        self.documents[source] = document
        self.version += 1
        return document

    def forget(self, source: str) -> Document:
        """Remove a document with its chunks, index entries, vectors and the links to it; KeyError
        if unknown."""
        document = self.documents.pop(source)
        for other in self.documents.values():
            if any(linked == source for linked, _ in other.links):
                other.links = tuple(link for link in other.links if link[0] != source)
        for chunk_id in document.chunk_ids:
            self.chunks.pop(chunk_id, None)
            if self.lexical.has_doc(chunk_id):
                self.lexical.unindex_doc(chunk_id)
        self.segments.pop(document.segment, None)
        self.version += 1
        return document

    # --- reading ----------------------------------------------------------------------------------

    def lexical_search(self, query: str, limit: int, every_word: bool = False,
                       only: np.ndarray | None = None) -> list[tuple[int, float]]:
        """Chunk ids by BM25 score: the chunks holding any of the query's words, or with
        ``every_word`` only those holding all of them (stop words aside; a word no chunk holds
        then leaves nothing); with ``only`` (chunk ids), only those among them, scored with the
        statistics of those chunks alone (so what others' chunks hold changes no score)."""
        words = set(_SPLITTER.process([query]))
        if only is not None:
            ids, scores = _bm25_among(self.lexical, words, every_word, only)
        elif every_word:
            ids, scores = _bm25_of_chunks_holding_all(self.lexical, words)
        else:
            found = [(hits, 1) for hits in map(self.lexical.search, words) if hits]
            merged = mass_weightedUnion(found) if found else {}
            ids = np.fromiter(merged.keys(), dtype=np.int64, count=len(merged))
            scores = np.fromiter(merged.values(), dtype=np.float32, count=len(merged))
        limit = min(limit, len(ids))
        if limit <= 0:
            return []
        top = np.argpartition(-scores, limit - 1)[:limit]  # a full sort of 100,000 scores costs ~45 ms
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(ids[row]), float(scores[row])) for row in top]

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored (ids, vectors), in segment order."""
        loaded = [segment.load() for segment in self.segments.values()]
        if not loaded:
            return np.zeros(0, dtype=np.int64), np.zeros((0, DIMENSIONS), dtype=np.float32)
        return np.concatenate([ids for ids, _ in loaded]), np.concatenate([v for _, v in loaded])

    def document_vectors(self, document: Document) -> np.ndarray:
        segment = self.segments.get(document.segment)
        return segment.load()[1] if segment is not None else np.zeros((0, DIMENSIONS), dtype=np.float32)

    def sources(self) -> Iterable[str]:
        return self.documents.keys()


def _bm25_of_chunks_holding_all(index: OkapiIndex, words: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """The ids and Okapi BM25 scores (OkapiIndex's own formula and constants) of the chunks that
    hold every one of ``words`` (stop words left out; an unknown word leaves no chunk). Only those
    chunks are scored: OkapiIndex.search scores every posting of a word, ~150 ms at 100,000 chunks
    for a frequent one, before any intersection."""
    nothing = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    wids = {wid for word in words for wid in index._lexicon.termToWordIds(word)}
    # only stop words, or a word no chunk holds (never seen: 0; its chunks all forgotten: no postings)
    if not wids or not all(wid in index._wordinfo for wid in wids):
        return nothing
    sized = sorted(((len(p), p) for p in map(index._wordinfo.__getitem__, wids)), key=lambda s: s[0])
    postings = [posting for _, posting in sized]  # rarest first; len() walks a BTree, so once
    common = IISet(postings[0].keys())
    for posting in postings[1:]:
        common = intersection(common, posting if isinstance(posting, IIBTree) else IISet(posting.keys()))
        if not common:
            return nothing
    ids = np.fromiter(common, dtype=np.int64, count=len(common))
    count = float(index.documentCount())
    lengths = np.fromiter((index._docweight[i] for i in common), dtype=np.float64, count=len(ids))
    length_weight = (1.0 - index.B) + index.B * lengths / (index._totaldoclen() / count)
    scores = np.zeros(len(ids))
    for chunks_holding, posting in sized:
        frequency = np.fromiter((posting[i] for i in common), dtype=np.float64, count=len(ids))
        scores += (frequency * (index.K1 + 1.0) / (frequency + index.K1 * length_weight)
                   * inverse_doc_frequency(chunks_holding, count))
    return ids, scores.astype(np.float32)


def _bm25_among(index: OkapiIndex, words: Iterable[str], every_word: bool,
                only: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Okapi BM25 (OkapiIndex's formula and constants) of the chunks ``only`` that hold every one
    of ``words`` (``every_word``) or any of them, as if ``only`` were the whole index: their count,
    their average length and how many of them hold each word."""
    nothing = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    wids = {wid for word in words for wid in index._lexicon.termToWordIds(word)}
    per_word = []
    for wid in wids:
        posting = index._wordinfo.get(wid) if wid else None
        docs = np.fromiter(posting.keys(), dtype=np.int64) if posting else np.zeros(0, dtype=np.int64)
        frequencies = np.fromiter(posting.values(), dtype=np.float64) if posting else np.zeros(0)
        kept = np.isin(docs, only)
        docs, frequencies = docs[kept], frequencies[kept]
        if not len(docs):
            if every_word:
                return nothing
            continue
        order = np.argsort(docs)
        per_word.append((docs[order], frequencies[order]))
    if not per_word or (every_word and len(per_word) < len(wids)):
        return nothing
    ids = per_word[0][0]
    for docs, _ in per_word[1:]:
        ids = np.intersect1d(ids, docs) if every_word else np.union1d(ids, docs)
    if not len(ids):
        return nothing
    all_lengths = np.fromiter((index._docweight.get(int(i), 0) for i in only), dtype=np.float64, count=len(only))
    average = max(float(all_lengths.mean()), 1.0)
    lengths = np.fromiter((index._docweight.get(int(i), 0) for i in ids), dtype=np.float64, count=len(ids))
    length_weight = (1.0 - index.B) + index.B * lengths / average
    scores = np.zeros(len(ids))
    for docs, frequencies in per_word:
        at = np.minimum(np.searchsorted(docs, ids), len(docs) - 1)
        frequency = np.where(docs[at] == ids, frequencies[at], 0.0)
        scores += (frequency * (index.K1 + 1.0) / (frequency + index.K1 * length_weight)
                   * inverse_doc_frequency(len(docs), float(len(only))))
    return ids, scores.astype(np.float32)


def install_catalog(root) -> None:
    if not isinstance(root.get(ROOT_KEY), Catalog):
        root[ROOT_KEY] = Catalog()


KNOWLEDGE_CATALOG = Furnishing("knowledge_catalog", 1, install_catalog)
