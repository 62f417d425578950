"""Retrieval quality on the labelled set (tests/retrieval_set.py) through a real UVM."""

from __future__ import annotations

import pytest

from conftest import Server
from retrieval_set import evaluate, package_questions, questions, write_documents, write_package_documents

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


def test_hybrid_on_the_stdlib_set_finds_as_many_and_ranks_within_a_question_of_vectors(scores):
    """The fusion is no longer the rule chosen on this set alone (every-word BM25 and vectors,
    which ranked below lexical search on the packages set): here it loses about one question's
    rank to the vectors (0.953 against 0.967 MRR@10) and finds every answer in the top five."""
    print("stdlib set:", scores)
    assert scores["hybrid"]["recall@5"] >= max(scores["lexical"]["recall@5"], scores["vector"]["recall@5"]), scores
    assert scores["hybrid"]["mrr@10"] >= scores["lexical"]["mrr@10"], scores
    assert scores["hybrid"]["mrr@10"] >= scores["vector"]["mrr@10"] - 1.5 / len(questions()), scores


@pytest.fixture(scope="module")
def package_scores(tmp_path_factory) -> dict:
    tmp_path = tmp_path_factory.mktemp("packages")
    paths = write_package_documents(tmp_path / "docs")
    assert len(paths) >= 60 and len(package_questions("held_out")) >= 24
    server = Server(tmp_path / "image.fs").start()
    try:
        with server.client(timeout=300) as client:
            results = client.memory_ingest([tmp_path / "docs"])
            assert all(r["status"] == "added" for r in results) and len(results) == len(paths)
            scores = {part: evaluate(lambda q, mode: client.memory_search(q, k=30, mode=mode), paths,
                                     items=package_questions(part)) for part in ("tune", "held_out")}
    finally:
        server.stop()
    return scores


def test_hybrid_is_at_least_as_good_as_the_better_single_mode_on_questions_kept_aside(package_scores):
    """The packages set's held-out part was seen only after the fusion was chosen."""
    print("packages set:", package_scores)
    held_out = package_scores["held_out"]
    for metric in ("recall@5", "mrr@10"):
        best_single = max(held_out["lexical"][metric], held_out["vector"][metric])
        assert held_out["hybrid"][metric] >= best_single, (metric, held_out)
    assert package_scores["tune"]["hybrid"]["mrr@10"] >= max(
        package_scores["tune"][mode]["mrr@10"] for mode in ("lexical", "vector")), package_scores
