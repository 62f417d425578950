"""Retrieval quality on the labelled set (tests/retrieval_set.py) through a real UVM."""

from __future__ import annotations

import pytest

from conftest import Server
from retrieval_set import questions, write_documents, evaluate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scores(tmp_path_factory) -> dict:
    tmp_path = tmp_path_factory.mktemp("quality")
    paths = write_documents(tmp_path / "docs")
    assert len(paths) >= 30 and len(questions()) >= 40
    server = Server(tmp_path / "image.fs").start()
    try:
        with server.client(timeout=120) as client:
            results = client.memory_ingest([tmp_path / "docs"])
            assert all(r["status"] == "added" for r in results) and len(results) == len(paths)
            scores = evaluate(lambda q, mode: client.memory_search(q, k=30, mode=mode), paths)
    finally:
        server.stop()
    return scores


def test_every_mode_finds_most_answers_on_the_labelled_set(scores):
    assert scores["vector"]["recall@5"] >= 0.9 and scores["vector"]["mrr@10"] >= 0.8, scores
    assert scores["hybrid"]["recall@5"] >= 0.9 and scores["hybrid"]["mrr@10"] >= 0.8, scores
    assert scores["lexical"]["recall@5"] >= 0.7, scores


def test_hybrid_is_at_least_as_good_as_the_better_of_lexical_and_vector(scores):
    for metric in ("recall@5", "mrr@10"):
        best_single = max(scores["lexical"][metric], scores["vector"][metric])
        assert scores["hybrid"][metric] >= best_single, (metric, scores)
