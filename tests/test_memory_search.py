"""The vector index's two paths and the fusion, on real MiniLM embeddings (no server)."""

from __future__ import annotations

import numpy as np

from batos.llm.embeddings import Embedder
from batos.memory.search import VectorIndex, maximal_marginal_relevance, reciprocal_rank_fusion

SENTENCES = [f"{subject} {verb} {thing}." for subject in ("The bridge", "A persona", "The sandbox", "Memory")
             for verb in ("routes", "audits", "stores", "forgets") for thing in ("replies", "methods", "chunks")]


def test_the_ann_graph_beyond_the_exact_limit_finds_what_exact_search_finds():
    embedder = Embedder()
    vectors = embedder.encode(SENTENCES)
    ids = np.arange(100, 100 + len(SENTENCES))
    exact, graph = VectorIndex(), VectorIndex(exact_limit=10)
    for index in (exact, graph):
        index.refresh(1, lambda: (ids, vectors))
    assert (exact.method, graph.method) == ("exact (numpy)", "usearch HNSW")
    for sentence in ("Which part routes the replies?", "Who forgets chunks?"):
        query = embedder.encode([sentence])[0]
        by_exact, by_graph = exact.search(query, 5), graph.search(query, 5)
        assert [i for i, _ in by_graph][:3] == [i for i, _ in by_exact][:3]
        assert np.allclose([s for _, s in by_graph], [s for _, s in by_exact], atol=1e-4)
    graph.refresh(1, lambda: (_ for _ in ()).throw(AssertionError("the same version is not loaded again")))
    assert graph.loads == 1


def test_fusion_rewards_agreement_and_mmr_drops_a_near_duplicate():
    fused = reciprocal_rank_fusion([(1, 9.0), (2, 5.0), (3, 1.0)], [(3, 0.9), (2, 0.8), (4, 0.1)])
    order = [chunk for chunk, _ in fused]
    assert set(order[:2]) == {2, 3} and order.index(1) == 2  # found by both beats first in one only
    same = np.array([1.0, 0.0], dtype=np.float32)
    vectors = {1: same, 2: same, 3: np.array([0.0, 1.0], dtype=np.float32)}
    picked = maximal_marginal_relevance([(1, 0.05), (2, 0.049), (3, 0.04)], vectors, 2)
    assert [chunk for chunk, _ in picked] == [1, 3]
