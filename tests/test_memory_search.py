"""The vector index's two paths, the lexical index's two ways of matching, and the fusion, on real
MiniLM embeddings (no server)."""

from __future__ import annotations

import numpy as np

from batos.llm.embeddings import Embedder
from batos.memory.catalog import Catalog
from batos.memory.chunking import Chunk
from batos.memory.search import VectorIndex, maximal_marginal_relevance, reciprocal_rank_fusion

SENTENCES = [f"{subject} {verb} {thing}." for subject in ("The bridge", "A persona", "The sandbox", "Memory")
             for verb in ("routes", "audits", "stores", "forgets") for thing in ("replies", "methods", "chunks")]


def exact_and_graph(embedder: Embedder) -> tuple[np.ndarray, VectorIndex, VectorIndex]:
    """The ids of SENTENCES, searched exactly and (past a limit of 10) through the graph."""
    vectors = embedder.encode(SENTENCES)
    ids = np.arange(100, 100 + len(SENTENCES))
    exact, graph = VectorIndex(), VectorIndex(exact_limit=10)
    for index in (exact, graph):
        index.refresh(1, lambda: (ids, vectors))
    return ids, exact, graph


def test_the_ann_graph_beyond_the_exact_limit_finds_what_exact_search_finds():
    embedder = Embedder()
    ids, exact, graph = exact_and_graph(embedder)
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


def test_the_lexical_side_of_hybrid_counts_only_chunks_holding_every_query_word():
    catalog = Catalog()
    texts = ["heappushpop pushes then pops the heap", "pops an item from the heap", "pushes an item"]
    chunks = [Chunk(text, "", 0, "prose") for text in texts]
    catalog.add("/notes.md", "d1", "markdown", 1, chunks, np.zeros((3, 384), dtype=np.float32))
    first = catalog.documents["/notes.md"].chunk_ids[0]
    any_word = [chunk for chunk, _ in catalog.lexical_search("pops the heap", 10)]
    assert len(any_word) == 2
    assert [c for c, _ in catalog.lexical_search("pops the heap", 10, every_word=True)] == any_word  # "the": a stop word
    assert [c for c, _ in catalog.lexical_search("pushes pops", 10, every_word=True)] == [first]
    assert catalog.lexical_search("pops the heap quietly", 10, every_word=True) == []  # "quietly": no chunk
    assert len(catalog.lexical_search("pops the heap quietly", 10)) == 2
    catalog.forget("/notes.md")  # the lexicon still knows the words; no chunk holds them
    assert catalog.lexical_search("pops the heap", 10, every_word=True) == []


def test_the_every_word_scores_are_okapi_bm25s_own():
    """Scoring only the chunks that hold every word gives what zope.index's OkapiIndex gives for
    them (its own scores, intersected), on enough chunks that postings become BTrees."""
    from zope.index.text.setops import mass_weightedIntersection

    rng = np.random.default_rng(1)
    vocabulary = [f"w{n}" for n in range(40)]
    texts = [" ".join(rng.choice(vocabulary, size=rng.integers(5, 30))) for _ in range(400)]
    catalog = Catalog()
    catalog.add("/many.md", "d", "markdown", 1, [Chunk(t, "", 0, "prose") for t in texts],
                np.zeros((len(texts), 384), dtype=np.float32))
    for query in ("w1 w2", "w0 w5 w9", "w3"):
        ours = dict(catalog.lexical_search(query, 1000, every_word=True))
        theirs = mass_weightedIntersection([(catalog.lexical.search(w), 1) for w in query.split()])
        assert ours and set(ours) == set(theirs.keys())
        assert all(abs(ours[c] - theirs[c]) < 1e-4 * max(1.0, theirs[c]) for c in ours)


def test_a_search_limited_to_some_chunks_finds_them_in_the_graph_as_exactly():
    embedder = Embedder()
    ids, exact, graph = exact_and_graph(embedder)
    only = ids[1::3]  # a third of the rows, none of them the closest to most queries
    query = embedder.encode(["Which part routes the replies?"])[0]
    by_exact, by_graph = exact.search(query, 4, only), graph.search(query, 4, only)
    assert len(by_exact) == 4 and {i for i, _ in by_exact} <= set(only.tolist())
    assert [i for i, _ in by_graph] == [i for i, _ in by_exact]
    assert exact.search(query, 4, np.zeros(0, dtype=np.int64)) == []


def test_scores_among_some_chunks_are_bm25_as_if_they_were_the_whole_index():
    """Limited to every chunk, the scores are OkapiIndex's own; limited to one document's chunks,
    they are what a catalog holding that document alone gives."""
    rng = np.random.default_rng(2)
    vocabulary = [f"w{n}" for n in range(30)]
    texts = {name: [" ".join(rng.choice(vocabulary, size=rng.integers(5, 30))) for _ in range(200)]
             for name in ("/mine.md", "/theirs.md")}
    both, alone = Catalog(), Catalog()
    for catalog, names in ((both, ("/mine.md", "/theirs.md")), (alone, ("/mine.md",))):
        for name in names:
            catalog.add(name, name, "markdown", 1, [Chunk(t, "", 0, "prose") for t in texts[name]],
                        np.zeros((200, 384), dtype=np.float32))
    everything = np.unique(np.fromiter(both.chunks.keys(), dtype=np.int64))
    mine = np.sort(np.asarray(both.documents["/mine.md"].chunk_ids, dtype=np.int64))
    for query in ("w1 w2", "w0 w5 w9", "w3"):
        for every_word in (True, False):
            plain = dict(both.lexical_search(query, 1000, every_word))
            among_all = dict(both.lexical_search(query, 1000, every_word, only=everything))
            assert plain and set(plain) == set(among_all)
            assert all(abs(plain[c] - among_all[c]) < 1e-4 * max(1.0, plain[c]) for c in plain)
            among_mine = sorted(s for _, s in both.lexical_search(query, 1000, every_word, only=mine))
            by_itself = sorted(s for _, s in alone.lexical_search(query, 1000, every_word))
            assert np.allclose(among_mine, by_itself, rtol=1e-4)
