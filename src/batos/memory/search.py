"""Vector search over the catalog's blobs, and the fusion of lexical and vector rankings.

``VectorIndex`` holds the catalog's vectors in memory for one catalog version: read from the
blobs once per version, never re-embedded. Up to ``exact_limit`` rows it ranks by an exact dot
product with numpy (8.8 ms at 100,000 rows here); beyond that it builds a usearch HNSW graph once
per version and asks it instead (bench/README.md has the measurements behind the limit).

Hybrid ranking is weighted reciprocal rank fusion: a chunk scores ``sum(weight / (RRF_K + rank))``
over the rankings it appears in, ``RRF_K = 60`` as in Cormack, Clarke and Büttcher (SIGIR 2009),
which keeps one ranking's top hit from outweighing agreement. Three rankings are fused
(``HYBRID_WEIGHTS``): BM25 over the chunks that hold every word of the query (an exact match, a
name or an identifier, is strong evidence), BM25 over the chunks that hold any of them at 0.3 (a
partial match is weak evidence, but without it a question phrased unlike its document is left to
the vectors alone), and the vector ranking. Chosen on two labelled sets, then checked on a third
part kept aside (bench/README.md, "Choosing the fusion"): it beats textbook RRF (any-word BM25
and vectors at equal weight) on all three and is at least as good as the better single mode on
the part kept aside.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from batos.llm.embeddings import DIMENSIONS

RRF_K = 60
EXACT_LIMIT = 250_000
SMALL_GRAPH_ROWS = 10_000
CANDIDATES = 50  # from each side, before fusion
HYBRID_WEIGHTS = (1.0, 0.3, 1.0)  # every-word BM25, any-word BM25, vectors


class VectorIndex:
    """The rows of one catalog version, searchable; rebuilt when the version changes."""

    def __init__(self, exact_limit: int = EXACT_LIMIT):
        self.exact_limit = exact_limit
        self._lock = threading.Lock()
        self._version: object = None
        self._ids = np.zeros(0, dtype=np.int64)
        self._vectors = np.zeros((0, DIMENSIONS), dtype=np.float32)
        self._graph = None
        self.loads = 0

    def refresh(self, version: object, load: Callable[[], tuple[np.ndarray, np.ndarray]]) -> None:
        """Make the index hold ``version``'s rows, calling ``load`` only if it does not already."""
        with self._lock:
            if version == self._version:
                return
            self._ids, self._vectors = load()
            self._graph = self._build_graph() if len(self._ids) > self.exact_limit else None
            self._version = version
            self.loads += 1

    def _build_graph(self):
        from usearch.index import Index

        graph = Index(ndim=self._vectors.shape[1], metric="ip", dtype="f32", expansion_search=128)
        # Inserted by several threads at once, a graph of a few dozen rows can leave a row out of
        # its closest neighbours' links (seen once in a loaded test run); a small one is built by one.
        graph.add(np.arange(len(self._ids)), self._vectors, threads=1 if len(self._ids) < SMALL_GRAPH_ROWS else 0)
        return graph

    @property
    def size(self) -> int:
        return len(self._ids)

    @property
    def method(self) -> str:
        return "usearch HNSW" if self._graph is not None else "exact (numpy)"

    def search(self, query: np.ndarray, limit: int, only: np.ndarray | None = None) -> list[tuple[int, float]]:
        """The ``limit`` chunk ids closest to the unit vector ``query``, with cosine similarity;
        with ``only`` (sorted chunk ids), the closest among those."""
        ids, vectors, graph = self._ids, self._vectors, self._graph
        if not len(ids) or limit <= 0:
            return []
        if graph is not None:
            return self._search_graph(graph, ids, query, limit, only)
        scores = vectors @ query
        rows = np.arange(len(ids)) if only is None else np.nonzero(np.isin(ids, only, assume_unique=True))[0]
        limit = min(limit, len(rows))
        if limit <= 0:
            return []
        top = rows[np.argpartition(-scores[rows], limit - 1)[:limit]]
        top = top[np.argsort(-scores[top])]
        return [(int(ids[row]), float(scores[row])) for row in top]

    @staticmethod
    def _search_graph(graph, ids: np.ndarray, query: np.ndarray, limit: int,
                      only: np.ndarray | None) -> list[tuple[int, float]]:
        """The graph's nearest rows; with ``only``, asked for four times more each round until
        ``limit`` of them are among ``only`` or every row has been offered."""
        wanted = limit
        while True:
            found = graph.search(query.astype(np.float32), min(wanted, len(ids)))
            hits = [(int(ids[row]), 1.0 - float(distance)) for row, distance in zip(found.keys, found.distances)]
            if only is not None:
                hits = [(chunk, score) for chunk, score in hits if _holds(only, chunk)]
            if only is None or len(hits) >= limit or wanted >= len(ids):
                return hits[:limit]
            wanted *= 4


    def vector_of(self, chunk_id: int) -> np.ndarray | None:
        rows = np.nonzero(self._ids == chunk_id)[0]
        return self._vectors[rows[0]] if len(rows) else None


def _holds(sorted_ids: np.ndarray, chunk: int) -> bool:
    at = int(np.searchsorted(sorted_ids, chunk))
    return at < len(sorted_ids) and int(sorted_ids[at]) == chunk


def reciprocal_rank_fusion(*rankings: list[tuple[int, float]],
                           weights: tuple[float, ...] | None = None) -> list[tuple[int, float]]:
    """One ranking from several, best first, each weighted (1 by default; see the module's note)."""
    fused: dict[int, float] = {}
    for number, ranking in enumerate(rankings):
        weight = 1.0 if weights is None else weights[number]
        for rank, (chunk_id, _) in enumerate(ranking, start=1):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + weight / (RRF_K + rank)
    return sorted(fused.items(), key=lambda item: -item[1])


def maximal_marginal_relevance(ranked: list[tuple[int, float]], vectors: dict[int, np.ndarray], limit: int,
                               trade_off: float = 0.7) -> list[tuple[int, float]]:
    """Re-pick ``ranked`` so near-duplicates of an already chosen hit fall back (MMR,
    Carbonell and Goldstein 1998). Relevance is the rank-based score, rescaled to 0..1."""
    if not ranked:
        return []
    top = ranked[0][1] or 1.0
    chosen: list[tuple[int, float]] = []
    left = list(ranked)
    while left and len(chosen) < limit:
        def gain(item: tuple[int, float]) -> float:
            vector = vectors.get(item[0])
            overlap = max((float(vector @ vectors[c]) for c, _ in chosen if vector is not None and c in vectors),
                          default=0.0)
            return trade_off * item[1] / top - (1 - trade_off) * overlap
        best = max(left, key=gain)
        left.remove(best)
        chosen.append(best)
    return chosen
