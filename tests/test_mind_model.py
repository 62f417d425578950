"""The Composite Mind on the real default model: asks end to end, streaming, follow-ups, and a
facet compiled once and run under its persona's real (peft) expert."""

from __future__ import annotations

import time

import pytest

from conftest import Server, llm_env

pytestmark = pytest.mark.slow
TECHNICAL = "My script crashes when the config file is missing. How do I fix it?"


@pytest.fixture(scope="module")
def mind(tmp_path_factory, model_cache):
    srv = Server(tmp_path_factory.mktemp("mind") / "image.fs", env=llm_env(model_cache)).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_a_technical_question_gets_brick_then_robin_streamed(mind):
    with mind.client(timeout=900) as c:
        pieces, events = [], []
        started = time.monotonic()
        result = c.ask(TECHNICAL, stream=lambda piece: pieces.append((time.monotonic(), piece)), on_event=events.append)
        replied = time.monotonic()
        assert result["route"]["archetype"] == "technical"
        turns = result["turns"]
        assert [t["persona"] for t in turns[:2]] == ["BRICK", "ROBIN"], turns
        assert all(t["state"] == "COMPLETE" and len(t["text"].split()) >= 3 for t in turns), [
            (t["persona"], t["state"], t["reason"], t["text"]) for t in turns]
        assert turns[0]["text"] != turns[1]["text"]
        streamed: dict[str, str] = {}  # cycle -> text of its last attempt (a revision streams anew)
        for event in events:
            if "text" in event:
                streamed[event["cycle"]] = streamed.get(event["cycle"], "") + event["text"]
            elif event.get("state") == "SYNTHESIZING":
                streamed[event["cycle"]] = ""
        assert [streamed[t["cycle"]] for t in turns] == [t["text"] for t in turns]
        assert len(pieces) > 10 and pieces[0][0] < replied - 2  # text came while the dialogue went on
        assert started < pieces[0][0]
        lead = c.call("cycle_show", cycle=turns[0]["cycle"])
        assert lead["state"] == "COMPLETE" and lead["depth"] == "facets"
        assert lead["plan"].get("steps") or lead["plan"].get("direct")

        follow_up = c.ask("Which Python exception does that raise?", conversation=result["conversation"],
                          persona="ROBIN", depth="direct")
        assert follow_up["turns"][0]["persona"] == "ROBIN" and follow_up["route"]["lead"] == "ROBIN"
        context = c.call("cycle_show", cycle=follow_up["turns"][0]["cycle"])["context"]
        assert context[0] == {"role": "user", "content": TECHNICAL}
        assert context[1]["content"].startswith("BRICK: ") and turns[0]["text"][:100] in context[1]["content"]
        shown = c.call("conversation_show", conversation=result["conversation"])
        assert len(shown["exchanges"]) == 2


def test_a_facet_compiles_once_and_runs_under_its_personas_expert(tmp_path, model_cache, adapters):
    srv = Server(tmp_path / "image.fs", env=llm_env(model_cache, BATOS_LORA_STAGING=str(adapters))).start()
    try:
        with srv.client(timeout=600) as c:
            deadline = time.monotonic() + 600
            while "BRICK" not in (c.stats()["llm"].get("experts") or {}) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert c.stats()["llm"]["experts"]["BRICK"] == "cold"
            prompt = "Describe a hammer."
            answer = c.send("brick_prototype_obj", "tamland_facet_", prompt, max_new_tokens=16)
            assert c.stats()["llm"]["experts"]["BRICK"] == "hot"  # the facet ran under BRICK's adapter
            facet = c.call("methods", target="brick_prototype_obj", selector="tamland_facet_")
            assert facet["persona"] == "BRICK" and "plain facts" in facet["facet_system"]
            bare = c.send("pLLM_obj", "infer_", prompt, system=facet["facet_system"], max_new_tokens=16)
            assert answer != bare  # the random adapter changes the answer
            # (under an adapter, llama.cpp's answers are not promised to be token-for-token equal from
            # one call to the next: its small F32 matrices take other kernels; see issue 9's note)
            again = c.send("brick_prototype_obj", "tamland_facet_", prompt, max_new_tokens=16)
            assert again and again != bare
            assert [x["selector"] for x in c.call("cycles_list")] == ["tamland_facet_"]  # compiled once
            bound = {p["name"]: p["bound_to"] for p in c.call("personas")}
            assert bound == {"BRICK": "expert", "ROBIN": "expert", "BABS": "system prompt", "ALFRED": "system prompt"}
    finally:
        srv.stop()


def test_babs_answers_from_an_ingested_note_and_cites_it(mind, tmp_path):
    note = tmp_path / "lighthouse-log.md"
    note.write_text("# Lighthouse log\n\nThe keeper of the Skerry lighthouse counted seventeen albatrosses at dawn "
                    "on the first of March.\n")
    with mind.client(timeout=900) as c:
        assert c.memory_ingest([note])[0]["status"] in ("added", "unchanged")
        result = c.ask("How many albatrosses did the keeper count at dawn, according to my notes?",
                       persona="BABS", depth="direct")
    babs = result["turns"][0]
    assert babs["persona"] == "BABS" and babs["state"] == "COMPLETE", babs
    assert babs["sources"] == [str(note)]
    assert "17" in babs["text"] or "seventeen" in babs["text"].lower(), babs["text"]
