"""The router: accuracy on question sets nobody tuned on, exemplars as data, what a taught exemplar
does, and no model call for a clear-cut question."""

from __future__ import annotations

import concurrent.futures
import json
import statistics
from pathlib import Path

import time

import pytest

from batos.client import RemoteError
from batos.llm.embeddings import Embedder
from batos.mind.exemplars import seed_exemplars
from batos.mind.router import Exemplar, Router
from conftest import Server, ScriptedMind, kinds_asked, run_cli, uvm

BENCH = Path(__file__).parent.parent / "bench"
LABELLED = BENCH / "router_queries.jsonl"
HELD_OUT = BENCH / "router_held_out.jsonl"  # written before the head and cues; never tuned on
DEV = BENCH / "router_dev.jsonl"  # written with it; the rules were chosen looking at this one
ARCHETYPES = ("technical", "emotional", "factual", "system")
# The phrasings the issue found misrouted (research and retrieval to BABS, planning to BRICK).
RESEARCH_AND_PLANNING = [
    ("Find what our notes say about the quarterly offsite.", "BABS"),
    ("Search the knowledge base for onboarding steps and list them.", "BABS"),
    ("Gather the facts about the Chernobyl accident with references.", "BABS"),
    ("Collect recent findings on sleep and memory.", "BABS"),
    ("What are the main differences between Python and Go, according to my notes?", "BABS"),
    ("Who wrote The Name of the Rose and when was it published?", "BABS"),
    ("Give me a plan to build a garden shed.", "BRICK"),
    ("What is the most efficient way to deduplicate ten million log lines?", "BRICK"),
    ("Design a database schema for a small library.", "BRICK"),
]


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


def labelled(path: Path = LABELLED) -> list[Exemplar]:
    return [Exemplar(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def accuracy(router: Router, questions: list[Exemplar]) -> float:
    return sum(router.route(q.text)["archetype"] == q.archetype for q in questions) / len(questions)


def confusion(router: Router, questions: list[Exemplar]) -> tuple[float, str]:
    """The share routed right, and a table of expected (rows) against chosen (columns)."""
    counts = {(a, b): 0 for a in ARCHETYPES for b in ARCHETYPES}
    for q in questions:
        counts[q.archetype, router.route(q.text, tie_break=False)["archetype"]] += 1
    right = sum(counts[a, a] for a in ARCHETYPES) / len(questions)
    rows = [f"{'':>10}" + "".join(f"{b:>10}" for b in ARCHETYPES)]
    rows += [f"{a:>10}" + "".join(f"{counts[a, b]:>10}" for b in ARCHETYPES) for a in ARCHETYPES]
    return right, "\n".join(rows)


@pytest.fixture(scope="module")
def seed_router(embedder) -> Router:
    seeds = [Exemplar(**e) for e in seed_exemplars()]
    router = Router(embedder, lambda: seeds)
    router.warm()
    return router


def test_nine_questions_in_ten_route_right_on_sets_nobody_tuned_on(seed_router):
    """The image's own exemplars, no model: the held-out set (written before the router's head
    and cues) and the old labelled set at 90 % or more; the dev set is shown."""
    figures = {}
    for name, path in (("held-out", HELD_OUT), ("old labelled", LABELLED), ("dev (tuned on)", DEV)):
        questions = labelled(path)
        figures[name], table = confusion(seed_router, questions)
        print(f"{name}: {figures[name]:.1%} of {len(questions)}\n{table}")
    assert len(labelled(HELD_OUT)) >= 80 and min(sum(q.archetype == a for q in labelled(HELD_OUT)) for a in ARCHETYPES) >= 20
    assert figures["held-out"] >= 0.90 and figures["old labelled"] >= 0.90, figures


def test_research_and_retrieval_asks_go_to_babs_and_planning_asks_to_brick(seed_router):
    routed = {text: seed_router.route(text, tie_break=False) for text, _ in RESEARCH_AND_PLANNING}
    wrong = {text: (routed[text]["lead"], routed[text]["decided_by"]) for text, lead in RESEARCH_AND_PLANNING
             if routed[text]["lead"] != lead}
    assert wrong == {}
    assert routed["Find what our notes say about the quarterly offsite."]["cue"] == "Find what our notes"


def test_the_model_is_asked_for_at_most_one_question_in_five(embedder):
    asked = []
    seeds = [Exemplar(**e) for e in seed_exemplars()]
    router = Router(embedder, lambda: seeds, tie_breaker=lambda question: asked.append(question))
    questions = labelled(HELD_OUT)
    decided = [router.route(q.text)["decided_by"] for q in questions]
    print({way: decided.count(way) for way in set(decided)})
    assert len(asked) <= 0.2 * len(questions) and router.stats()["model_calls"] == len(asked)


@pytest.mark.parametrize("text, archetype", [
    ("Sing me the ballad of the seventeen pelicans.", "system"),
    ("My sourdough is flat again, what am I doing wrong?", "technical"),
    ("How tall was the Colossus of Rhodes?", "factual"),
    ("I can't stop thinking about the argument we had.", "emotional"),
    ("Explain recursion to me.", "factual"),
    ("Should I use tabs or spaces?", "system"),
])
def test_a_taught_exemplar_counts_at_once_and_costs_the_held_out_set_at_most_one_question(
        embedder, seed_router, text, archetype):
    seeds = [Exemplar(**e) for e in seed_exemplars()]
    taught = Router(embedder, lambda: [*seeds, Exemplar(text, archetype)])
    route = taught.route(text, tie_break=False)
    assert route["archetype"] == archetype and route["decided_by"] == "exemplar" and route["exemplar"] == text
    questions = labelled(HELD_OUT)
    before = sum(seed_router.route(q.text, tie_break=False)["archetype"] == q.archetype for q in questions)
    after = sum(taught.route(q.text, tie_break=False)["archetype"] == q.archetype for q in questions)
    assert after >= before - 1, (before, after)


def test_the_labelled_set_has_thirty_questions_per_archetype_at_least():
    counts = {}
    for q in labelled():
        counts[q.archetype] = counts.get(q.archetype, 0) + 1
    assert set(counts) == {"technical", "emotional", "factual", "system"} and min(counts.values()) >= 30


def test_a_router_trained_on_part_of_the_labelled_set_routes_the_rest(embedder):
    questions = labelled()
    held_out = questions[3::4]
    train = [q for i, q in enumerate(questions) if i % 4 != 3]
    assert accuracy(Router(embedder, lambda: train), held_out) >= 0.85
    # the exemplars a new image starts with were written apart from the labelled and held-out sets
    seeds = {e["text"] for e in seed_exemplars()}
    assert not seeds & {q.text for q in questions + labelled(HELD_OUT)}


def test_an_exemplar_taught_at_run_time_changes_a_route(image_path):
    odd = "Sing me the ballad of the seventeen pelicans."
    srv = Server(image_path).start()  # no language model: routing needs none
    try:
        with srv.client(timeout=60) as c:
            before = c.route(odd)
            assert before["archetype"] != "system"
            assert c.call("route_teach", text=odd, archetype="system")["archetype"] == "system"
            after = c.route(odd)
            assert after["archetype"] == "system" and after["lead"] == "ALFRED" and after["decided_by"] == "exemplar"
            out = run_cli("route", "--json", "Find what my notes say about the boiler.", "--endpoint", srv.endpoint)
            why = json.loads(out.stdout)["result"]
            assert why["lead"] == "BABS" and why["decided_by"] == "cue" and why["cue"] == "Find what my notes"
            assert [a for a, _ in why["top"]] == sorted(why["scores"], key=why["scores"].get, reverse=True)[:2]
            out = run_cli("route", odd, "--endpoint", srv.endpoint)
            assert "decided by exemplar (the taught question 'Sing me the ballad" in out.stdout and "best two:" in out.stdout
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
            while not (c.stats()["router"] or {}).get("warm") and time.monotonic() < deadline:
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


def test_an_image_from_before_the_new_seeds_gets_them_and_keeps_what_was_taught(image_path):
    from batos.image import open_image
    from batos.image.genesis import FURNISHED_KEY
    from batos.mind.codex import CODEX
    from batos.mind.conversations import CONVERSATIONS
    from batos.mind.exemplars import EXEMPLARS, EXEMPLAR_SLOT, exemplars_of
    from conftest import in_transaction

    furnishings = (CODEX, EXEMPLARS, CONVERSATIONS)
    image = open_image(str(image_path), furnishings=furnishings)
    seeds = seed_exemplars()
    try:
        with in_transaction(image) as root:  # as a wave-3 image left it: the first 48 seeds, one taught
            store = root["orchestrator_obj"]._slots[EXEMPLAR_SLOT]
            for key in list(store.keys())[48:]:
                del store[key]
            store[store.maxKey() + 1] = {"text": "Sing me the ballad of the pelicans.", "archetype": "system"}
            root[FURNISHED_KEY]["router_exemplars"] = 3
    finally:
        image.close()
    image = open_image(str(image_path), furnishings=furnishings)
    try:
        with in_transaction(image) as root:
            known = [(e.text, e.archetype) for e in exemplars_of(root)]
    finally:
        image.close()
    assert len(known) == len(seeds) + 1 and len(set(known)) == len(known)
    assert ("Sing me the ballad of the pelicans.", "system") in known
    assert {(e["text"], e["archetype"]) for e in seeds} <= set(known)


def test_a_teach_embeds_its_exemplar_so_the_next_route_does_not(image_path):
    """Review finding: taught exemplars were embedded by the next route, anyone's (65 s after
    1,890 teaches), and routes at the same time each embedded them again."""
    srv = Server(image_path).start()
    try:
        with srv.client(timeout=60) as c:
            c.route("warm up")
            embedded = c.stats()["router"]["exemplars_embedded"]
            for i in range(40):
                c.call("route_teach", text=f"Question {i} about the herons of the northern lake?", archetype="factual")
            assert c.stats()["router"]["exemplars_embedded"] == embedded + 40  # before any route
            def route(question: str) -> dict:
                with srv.client(timeout=60) as own:
                    return own.route(question)
            with concurrent.futures.ThreadPoolExecutor(3) as pool:  # three routes, one training
                list(pool.map(route, ["How do I fix a leaking tap?"] * 3))
            assert c.stats()["router"]["head_trainings"] == 2
    finally:
        srv.stop()
