"""The router: accuracy on the labelled set, exemplars as data, and no model call for a clear-cut question."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import time

import pytest

from batos.client import RemoteError
from batos.llm.embeddings import Embedder
from batos.mind.exemplars import seed_exemplars
from batos.mind.router import Exemplar, Router
from conftest import Server, ScriptedMind, kinds_asked, uvm

LABELLED = Path(__file__).parent.parent / "bench" / "router_queries.jsonl"


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


def labelled() -> list[Exemplar]:
    return [Exemplar(**json.loads(line)) for line in LABELLED.read_text().splitlines() if line.strip()]


def accuracy(router: Router, questions: list[Exemplar]) -> float:
    return sum(router.route(q.text)["archetype"] == q.archetype for q in questions) / len(questions)


def test_the_labelled_set_has_thirty_questions_per_archetype_at_least():
    counts = {}
    for q in labelled():
        counts[q.archetype] = counts.get(q.archetype, 0) + 1
    assert set(counts) == {"technical", "emotional", "factual", "system"} and min(counts.values()) >= 30


def test_held_out_accuracy_is_at_least_85_percent(embedder):
    questions = labelled()
    held_out = questions[3::4]
    train = [q for i, q in enumerate(questions) if i % 4 != 3]
    assert accuracy(Router(embedder, lambda: train), held_out) >= 0.85
    # the exemplars a new image starts with were written apart from the labelled set
    seeds = [Exemplar(**e) for e in seed_exemplars()]
    assert not {s.text for s in seeds} & {q.text for q in questions}
    assert accuracy(Router(embedder, lambda: seeds), questions) >= 0.85


def test_an_exemplar_taught_at_run_time_changes_a_route(image_path):
    odd = "Sing me the ballad of the seventeen pelicans."
    srv = Server(image_path).start()  # no language model: routing needs none
    try:
        with srv.client(timeout=60) as c:
            before = c.route(odd)
            assert before["archetype"] != "system"
            assert c.call("route_teach", text=odd, archetype="system")["archetype"] == "system"
            after = c.route(odd)
            assert after["archetype"] == "system" and after["lead"] == "ALFRED" and after["decided_by"] == "embeddings"
            srv.stop()
            srv.start()
            assert c.route(odd)["archetype"] == "system"  # the exemplar is in the image
            with pytest.raises(RemoteError) as caught:
                c.route("  ")
            assert caught.value.code == "bad_request"
    finally:
        srv.stop()


def test_the_router_is_warm_before_the_first_route(image_path):
    """Loaded at start, off the event loop: the first route embeds only its own question."""
    srv = Server(image_path).start()
    try:
        with srv.client(timeout=60) as c:
            deadline = time.monotonic() + 60
            while not (c.stats()["router"] or {}).get("exemplars_embedded") and time.monotonic() < deadline:
                assert c.ping()  # the bridge answers while the embedder loads
                time.sleep(0.1)
            before = c.stats()
            assert before["embeddings"]["loaded"] and before["router"]["exemplars_embedded"] > 0
            c.route("How do I rotate the logs of a busy web server?")
            after = c.stats()["embeddings"]
            assert after["sentences"] - before["embeddings"]["sentences"] == 1
    finally:
        srv.stop()


def test_teaching_an_exemplar_writes_a_bounded_record_however_many_are_known(image_path):
    """A taught exemplar adds one record to a numbered store: the image grows by about as much
    for the 300th as for the 1st (a list rewritten whole grew with every exemplar known)."""
    srv = Server(image_path).start()
    try:
        with srv.client(timeout=60) as c:
            growth = []  # the median bytes one teach adds, for the 1st, 2nd and 3rd hundred
            for block in range(3):
                added = []
                for i in range(100):
                    before = image_path.stat().st_size
                    c.call("route_teach", text=f"Question {block}-{i} about the pelicans of lake {i}?", archetype="factual")
                    added.append(image_path.stat().st_size - before)
                growth.append(statistics.median(added))
            srv.stop()
            srv.start()
            with pytest.raises(RemoteError) as caught:  # the router's data: route --teach changes it
                c.set("orchestrator_obj", "router_exemplars", c.get("orchestrator_obj", "router_exemplars"))
            assert caught.value.code == "protected"
            assert c.call("route_teach", text="One more pelican question?", archetype="factual")["exemplars"] == \
                len(seed_exemplars()) + 301
    finally:
        srv.stop()
    assert growth[2] < 1.3 * growth[0], growth
    assert growth[2] < 8_000, growth


def test_route_asks_the_model_only_to_break_a_tie(image_path, mind_server):
    ScriptedMind.answers = {"route": ["factual"]}
    srv = uvm(image_path, mind_server).start()
    try:
        with srv.client(timeout=60) as c:
            c.call("stats")
            clear = c.route("What is the capital of France?")
            assert clear["lead"] == "BABS" and clear["decided_by"] == "embeddings"
            assert kinds_asked() == []
            tied = "Zorblat quux frobnicate the wibble?"
            for archetype in ("technical", "factual"):  # the same text for two archetypes: a tie
                for _ in range(3):
                    c.call("route_teach", text=tied, archetype=archetype)
            route = c.route(tied)
            assert route["decided_by"] == "model" and route["archetype"] == "factual"
            assert kinds_asked() == ["route"]
    finally:
        srv.stop()
