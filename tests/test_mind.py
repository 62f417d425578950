"""The Composite Mind through a real UVM on a scripted model: codex, Synaptic Cycle, dialogue,
conversations, and every way an answer can go wrong."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from batos.client import RemoteError
from batos.image import open_image
from batos.image.genesis import SCHEMA_KEY
from batos.mind.codex import CODEX, CODICES, persona_root_name
from batos.mind.conversations import CONVERSATIONS
from batos.mind.exemplars import EXEMPLARS
from conftest import ScriptedMind, in_transaction, kinds_asked, opened_root, run_cli, uvm

pytestmark = pytest.mark.slow
FURNISHINGS = (CODEX, EXEMPLARS, CONVERSATIONS)
TECHNICAL = "My script crashes when the config file is missing. How do I fix it?"
PLAN = json.dumps({"steps": [{"facet": "tamland_facet_", "question": "What exactly fails?"},
                             {"facet": "guide_facet_", "question": "What is a surprising fact about config files?"}]})
LEAD = "Check that the config file exists before reading it, and fall back to defaults when it is missing."
PARTNER = "You are close to fixing it, and a missing config file is a very common script problem to have."


def answers(plan=PLAN, facet="A config file is missing, and the script reads it without checking.",
            reply=(LEAD, PARTNER)):
    ScriptedMind.answers = {"plan": [plan] if isinstance(plan, str) else list(plan),
                            "facet": [facet] if isinstance(facet, (str, int)) else list(facet),
                            "reply": list(reply)}


def cycle(c, cycle_id):
    return c.call("cycle_show", cycle=cycle_id)


def test_codex_is_in_the_image_after_genesis_and_after_migrating_a_wave_1_image(image_path):
    image = open_image(str(image_path), furnishings=FURNISHINGS)
    try:
        with in_transaction(image) as root:
            for codex in CODICES:
                persona = root[persona_root_name(codex.name)]
                assert persona.name == codex.name and persona.identity and persona.voice and persona.expert == codex.name
                facets = {k: v for k, v in persona._slots.items() if k.endswith("_facet_")}
                assert set(facets) == set(codex.facets) and len(facets) == 3
                assert all(isinstance(v, str) and len(v) > 20 for v in facets.values())
            assert len(root["orchestrator_obj"].router_exemplars) >= 40
    finally:
        image.close()
    wave_1 = image_path.parent / "wave1.fs"
    with opened_root(wave_1) as root:  # an image from before the mind: no codex, schema 1
        for name in ("pLLM_obj",):
            for slot in ("model_bundles", "lora_repository", "active_model", "infer_"):
                del root[name]._slots[slot]
        root["robin_prototype_obj"].identity = "my own ROBIN"  # a user's change survives the migration
        root[SCHEMA_KEY] = 1
    image = open_image(str(wave_1), furnishings=FURNISHINGS)
    try:
        with in_transaction(image) as root:
            assert root["robin_prototype_obj"].identity == "my own ROBIN"
            assert root["robin_prototype_obj"].name == "ROBIN"
            assert isinstance(root["robin_prototype_obj"].sage_facet_, str)
            assert root["brick_prototype_obj"].tamland_facet_.startswith("You state plain facts")
            assert len(root["conversations"]) == 0
    finally:
        image.close()


def test_ask_plans_delegates_weaves_and_keeps_the_conversation(image_path, mind_server):
    answers()
    srv = uvm(image_path, mind_server).start()
    try:
        with srv.client(timeout=60) as c:
            events, pieces = [], []
            result = c.ask(TECHNICAL, stream=pieces.append, on_event=events.append)
            assert result["route"]["lead"] == "BRICK" and result["route"]["partners"] == ["ROBIN"]
            assert [(t["persona"], t["role"]) for t in result["turns"]] == [("BRICK", "lead"), ("ROBIN", "partner")]
            assert [t["text"] for t in result["turns"]] == [LEAD, PARTNER]
            assert result["turns"][0]["facets"] == ["tamland_facet_", "guide_facet_"]
            assert "".join(pieces) == LEAD + PARTNER
            assert kinds_asked() == ["plan", "facet", "facet", "reply", "reply"]
            lead = cycle(c, result["turns"][0]["cycle"])
            assert [t["state"] for t in lead["transitions"]] == ["IDLE", "DECOMPOSING", "DELEGATING", "SYNTHESIZING",
                                                                "VALIDATING", "COMPLETE"]
            assert lead["kind"] == "answer" and lead["plan"]["steps"][0]["facet"] == "tamland_facet_"
            facet_request = ScriptedMind.requests[1][1]["messages"]
            assert "BRICK" in facet_request[0]["content"] and "plain facts" in facet_request[0]["content"]
            partner_prompt = ScriptedMind.requests[4][1]["messages"][-1]["content"]
            assert "BRICK said: <<" + LEAD + ">>" in partner_prompt  # the partner sees the lead's text
            assert "Do not repeat or quote it" in partner_prompt
            compiled = {f["selector"]: f["compiled"] for p in c.call("personas") if p["name"] == "BRICK" for f in p["facets"]}
            assert compiled == {"tamland_facet_": True, "guide_facet_": True, "lego_batman_facet_": False}
            method_cycles = [x for x in c.call("cycles_list") if x["kind"] == "method"]
            assert sorted(x["selector"] for x in method_cycles) == ["guide_facet_", "tamland_facet_"]

            ScriptedMind.requests.clear()
            answers(reply=("Run the script once with its config file and once without it, and compare.",
                           "Testing the fix is a good habit, and you are nearly there with this one."))
            follow_up = c.ask("And how do I test that fix?", conversation=result["conversation"], persona="BRICK",
                              depth="facets")
            assert follow_up["conversation"] == result["conversation"] and follow_up["exchange"] == 1
            reply_request = next(body for kind, body in ScriptedMind.requests if kind == "reply")["messages"]
            assert any(TECHNICAL in m["content"] for m in reply_request[1:-1])  # the first exchange, as context
            assert any(LEAD in m["content"] for m in reply_request[1:-1])
            assert len([x for x in c.call("cycles_list") if x["kind"] == "method"]) == 2  # compiled once
            shown = c.call("conversation_show", conversation=result["conversation"])
            assert [e["state"] for e in shown["exchanges"]] == ["answered", "answered"]
            assert [t["state"] for t in shown["exchanges"][0]["turns"]] == ["complete", "complete"]
            assert c.call("conversations_list")[0]["turns"] == 4
        out = run_cli("conversations", "show", result["conversation"], "--endpoint", srv.endpoint)
        assert out.returncode == 0 and "BRICK: " + LEAD in out.stdout and "ROBIN: " + PARTNER in out.stdout
        pruned = run_cli("conversations", "prune", "--endpoint", srv.endpoint, "--json")
        assert json.loads(pruned.stdout)["result"]["pruned"] == [result["conversation"]]
    finally:
        srv.stop()


def test_cli_ask_streams_turns_and_route_then_json_has_everything(image_path, mind_server):
    answers(reply=("1. Check the file. 2. Use defaults when it is missing.", PARTNER))
    srv = uvm(image_path, mind_server).start()
    try:
        out = run_cli("ask", TECHNICAL, "--depth", "direct", "--endpoint", srv.endpoint)
        assert out.returncode == 0, out.stderr
        assert "[route: technical → BRICK, then ROBIN]" in out.stderr
        assert out.stdout.startswith("BRICK: 1. Check the file. 2. Use defaults when it is missing.\nROBIN: " + PARTNER)
        answers(reply=["Feeling anxious before an interview is natural; it shows the interview matters to you.",
                       "1. Prepare three stories for the interview. 2. Sleep well before the interview."])
        out = run_cli("ask", "I'm anxious about my interview tomorrow.", "--persona", "robin", "--json",
                      "--endpoint", srv.endpoint)
        result = json.loads(out.stdout).get("result", out.stdout + out.stderr)
        assert isinstance(result, dict), result
        assert result["route"]["lead"] == "ROBIN" and result["turns"][0]["persona"] == "ROBIN"
        assert "plan" not in kinds_asked()  # a short question takes the direct path
        route = json.loads(run_cli("route", "What is the boiling point of water on Everest?", "--json",
                                   "--endpoint", srv.endpoint).stdout)["result"]
        assert route["lead"] == "BABS" and set(route["scores"]) == {"technical", "emotional", "factual", "system"}
        personas = run_cli("personas", "--endpoint", srv.endpoint)
        assert personas.returncode == 0 and "ALFRED" in personas.stdout and "not compiled" in personas.stdout
    finally:
        srv.stop()


def test_a_bad_plan_is_fed_back_then_the_persona_answers_directly(image_path, mind_server):
    answers(plan=["I would use the tamland facet.", json.dumps({"steps": [{"facet": "nonsense_facet_", "question": "What now?"}]})])
    srv = uvm(image_path, mind_server).start()
    try:
        with srv.client(timeout=60) as c:
            result = c.ask(TECHNICAL)
            assert result["turns"][0]["text"] == LEAD and result["turns"][0]["facets"] == []
            assert kinds_asked() == ["plan", "plan", "reply", "reply"]
            feedback = ScriptedMind.requests[1][1]["messages"][-1]["content"]
            assert "rejected" in feedback and "no JSON object" in feedback
            lead = cycle(c, result["turns"][0]["cycle"])
            assert lead["plan"]["direct"] and "not one of your pillars" in lead["plan"]["why"]
            assert [a["stage"] for a in lead["attempts"]] == ["plan", "plan", "reply"]
    finally:
        srv.stop()


def test_failed_facets_are_recorded_and_left_out_of_the_weave(image_path, mind_server):
    answers(facet=400)
    srv = uvm(image_path, mind_server).start()
    try:
        with srv.client(timeout=60) as c:
            result = c.ask(TECHNICAL)
            assert result["turns"][0]["text"] == LEAD and result["turns"][0]["facets"] == []
            lead = cycle(c, result["turns"][0]["cycle"])
            assert all(a["text"] is None and "HTTP 400" in a["error"] for a in lead["facet_answers"])
            weave = next(body for kind, body in ScriptedMind.requests if kind == "reply")["messages"][-1]["content"]
            assert "Notes from your pillars" not in weave
    finally:
        srv.stop()


def test_the_quality_gate_revises_then_answers_plainly_and_fails_only_when_empty(image_path, mind_server):
    answers(reply=["", LEAD, PARTNER])
    srv = uvm(image_path, mind_server).start()
    try:
        with srv.client(timeout=60) as c:
            result = c.ask(TECHNICAL, depth="direct")
            lead = cycle(c, result["turns"][0]["cycle"])
            assert [a["verdict"] for a in lead["attempts"]] == ["the reply is empty", "passed"]
            first, revision = [body for kind, body in ScriptedMind.requests if kind == "reply"][:2]
            assert revision["temperature"] == 0.7 and first["temperature"] == 0.0  # sampled, not a greedy repeat
            assert len(revision["messages"]) == len(first["messages"]) - 2  # without the codex's example
            assert [t for t in lead["transitions"] if t["state"] == "SYNTHESIZING"].__len__() == 2

            leak = "You are BRICK, the deconstruction engine: a logical, architectural, action-oriented mind."
            answers(reply=[leak, "ok", "Check the pipeline's logs for the test that fails only sometimes."])
            result = c.ask("How do I fix a flaky unit test in my CI pipeline?", depth="direct")
            lead = cycle(c, result["turns"][0]["cycle"])
            verdicts = [a["verdict"] for a in lead["attempts"]]
            assert "repeats its instructions" in verdicts[0] and "word(s)" in verdicts[1] and verdicts[2] == "passed"
            assert "plain answer" in lead["plan"]["why"]  # the third try: no facets, no example
            assert result["turns"][0]["text"].startswith("Check the pipeline")

            answers(reply=["", "  ", ""])  # only an empty reply, every time, is an error
            with pytest.raises(RemoteError) as caught:
                c.ask("How do I make my CI pipeline faster?", depth="direct")
            assert caught.value.code == "synthesis_failed"
            assert "quality gate after 3 attempts" in caught.value.message and "empty" in caught.value.message
            failed = [x for x in c.call("cycles_list") if x["state"] == "FAILED"]
            assert len(failed) == 1
            conversation = c.call("conversation_show", conversation=c.call("conversations_list")[-1]["id"])
            assert conversation["exchanges"][-1]["state"] == "failed"
            assert conversation["exchanges"][-1]["turns"][0]["state"] == "failed"

            answers(reply=[leak, leak, "ok"])  # a plain answer that the gate would refuse is still an answer
            result = c.ask("Why does my CI pipeline time out?", depth="direct")
            kept = cycle(c, result["turns"][0]["cycle"])["attempts"][-1]["verdict"]
            assert result["turns"][0]["text"] == "ok" and kept.startswith("kept as the plain answer")
    finally:
        srv.stop()


def test_a_partner_sees_the_leads_text_and_a_copy_of_it_is_revised_then_answered_without_it(image_path, mind_server):
    copy = "As BRICK said: " + LEAD
    answers(reply=[LEAD, copy, copy, PARTNER])
    srv = uvm(image_path, mind_server).start()
    try:
        with srv.client(timeout=60) as c:
            result = c.ask(TECHNICAL, depth="direct")
            assert [t["text"] for t in result["turns"]] == [LEAD, PARTNER]
            partner = cycle(c, result["turns"][1]["cycle"])
            verdicts = [a["verdict"] for a in partner["attempts"]]
            assert "repeats the turn before it" in verdicts[0] and "repeats the turn before it" in verdicts[1]
            assert verdicts[2] == "passed"
            prompts = [body["messages"][-1]["content"] for kind, body in ScriptedMind.requests if kind == "reply"][1:]
            assert LEAD in prompts[0] and LEAD in prompts[1]
            assert LEAD not in prompts[2] and "BRICK already answered this" in prompts[2]
    finally:
        srv.stop()


def test_turns_caps_one_dialogue_and_a_bad_cap_is_refused_writing_nothing(image_path, mind_server):
    answers(reply=(LEAD, PARTNER))
    srv = uvm(image_path, mind_server).start()
    try:
        with srv.client(timeout=60) as c:
            result = c.ask(TECHNICAL, depth="direct", turns=1)
            assert [t["persona"] for t in result["turns"]] == ["BRICK"]
            for bad in (0, 4, True, 1.5, "2"):
                with pytest.raises(RemoteError) as caught:
                    c.call("ask", question=TECHNICAL, turns=bad)
                assert caught.value.code == "bad_request", bad
            assert len(c.call("conversations_list")) == 1
        out = run_cli("ask", TECHNICAL, "--depth", "direct", "--turns", "9", "--endpoint", srv.endpoint)
        assert out.returncode != 0 and "turns must be a whole number from 1 to 3" in out.stderr
    finally:
        srv.stop()


def test_robin_never_answers_with_a_list_or_code(image_path, mind_server):
    listed = "Here is what helps:\n1. Breathe slowly before you go in.\n2. Remember why they chose you."
    coded = "First days make everyone nervous:\n```python\nprint('nervous about the new job')\n```\nYou will be fine at the new job."
    answers(reply=[listed, coded, listed, "1. Arrive early. 2. Bring a notebook."])
    srv = uvm(image_path, mind_server).start()
    try:
        with srv.client(timeout=60) as c:
            events = []
            result = c.ask("I'm nervous about my first day at a new job.", persona="ROBIN", depth="direct",
                           on_event=events.append)
            robin = result["turns"][0]
            assert robin["persona"] == "ROBIN" and "```" not in robin["text"]
            streamed = ""  # what a person watching saw of the last try: the kept text, not the list
            for event in (e for e in events if e.get("cycle") == robin["cycle"]):
                streamed = "" if event.get("state") == "SYNTHESIZING" else streamed + event.get("text", "")
            assert streamed == robin["text"]
            assert not re.search(r"^\s*\d+[.)]", robin["text"], re.MULTILINE)
            assert "Breathe slowly before you go in." in robin["text"]
            verdicts = [a["verdict"] for a in cycle(c, robin["cycle"])["attempts"]]
            assert "is a list" in verdicts[0] and "holds code" in verdicts[1] and verdicts[2].startswith("kept")
    finally:
        srv.stop()


def test_transient_failures_are_retried_and_a_dead_model_fails_the_ask_cleanly(image_path, mind_server):
    answers(reply=[503, LEAD, PARTNER])
    srv = uvm(image_path, mind_server, BATOS_OPENAI_TIMEOUT="5").start()
    try:
        with srv.client(timeout=120) as c:
            result = c.ask(TECHNICAL, depth="direct")
            assert result["turns"][0]["text"] == LEAD
            answers(reply=[400])
            with pytest.raises(RemoteError) as caught:
                c.ask(TECHNICAL, depth="direct")
            assert caught.value.code == "synthesis_failed" and "HTTP 400" in caught.value.message
    finally:
        srv.stop()


def test_bad_input_gets_clear_errors_and_writes_nothing(image_path, mind_server):
    srv = uvm(image_path, mind_server).start()
    try:
        with srv.client(timeout=30) as c:
            for fields, code, words in (
                ({"question": ""}, "bad_request", "empty"),
                ({"question": "   \n"}, "bad_request", "empty"),
                ({"question": "hello?", "persona": "JOKER"}, "bad_request", "unknown persona"),
                ({"question": "x" * 5000}, "too_large", "at most 4000"),
                ({"question": "hello?", "conversation": "0123456789ab"}, "not_found", "no conversation"),
                ({"question": "hello?", "depth": "deep"}, "bad_request", "depth"),
                ({"question": 42}, "bad_request", "question"),
            ):
                with pytest.raises(RemoteError) as caught:
                    c.call("ask", **fields)
                assert caught.value.code == code and words in caught.value.message, (fields, caught.value)
            with pytest.raises(RemoteError) as caught:
                c.call("route_teach", text="hello", archetype="gossip")
            assert caught.value.code == "bad_request"
            with pytest.raises(RemoteError) as caught:
                c.call("conversation_show", conversation="nope")
            assert caught.value.code == "not_found"
            assert c.call("conversations_list") == [] and c.call("cycles_list") == []
            assert ScriptedMind.requests == []
    finally:
        srv.stop()


def test_kill_9_during_a_synaptic_cycle_resumes_and_the_conversation_stays_consistent(image_path, mind_server):
    answers()
    ScriptedMind.delays = {"reply": 3.0}
    srv = uvm(image_path, mind_server).start()
    asked = threading.Thread(target=lambda: _ask_quietly(srv, TECHNICAL), daemon=True)
    asked.start()
    with srv.client() as c:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            answering = [x for x in c.call("cycles_list") if x["kind"] == "answer" and x["state"] == "SYNTHESIZING"]
            if answering:
                break
            time.sleep(0.05)
        assert answering, c.call("cycles_list")
    srv.kill()
    ScriptedMind.delays = {}
    srv = uvm(image_path, mind_server, endpoint=srv.endpoint).start()
    try:
        with srv.client(timeout=60) as c:
            cycle_id = answering[0]["id"]
            deadline = time.monotonic() + 30
            while cycle(c, cycle_id)["state"] != "COMPLETE" and time.monotonic() < deadline:
                time.sleep(0.1)
            shown = cycle(c, cycle_id)
            assert shown["state"] == "COMPLETE" and [t["state"] for t in shown["transitions"]].count("COMPLETE") == 1
            conversation = c.call("conversation_show", conversation=c.call("conversations_list")[0]["id"])
            exchange = conversation["exchanges"][0]
            assert exchange["state"] == "interrupted"
            assert [(t["persona"], t["state"]) for t in exchange["turns"]] == [("BRICK", "complete")]
            assert exchange["turns"][0]["text"] == shown["reply"]
            again = c.ask(TECHNICAL, conversation=conversation["id"], depth="direct")  # the conversation goes on
            assert again["exchange"] == 1
    finally:
        srv.stop()
    doctor = run_cli("doctor", "--image", str(image_path))
    assert doctor.returncode == 0, doctor.stdout


def _ask_quietly(srv, question):
    try:
        with srv.client(timeout=60) as c:
            c.ask(question)
    except Exception:
        pass  # the UVM is killed under it


def test_the_method_cycle_routes_its_mission_and_records_who_wrote_it(image_path, mind_server):
    from conftest import ADD, EXAMPLE, make_counter

    make_counter(image_path)
    ScriptedMind.answers = {"method": [f"```python\n{ADD}```"]}
    srv = uvm(image_path, mind_server).start()
    try:
        with srv.client(timeout=60) as c:
            assert c.send("counter_obj", "add_to_total", 5, examples=[EXAMPLE], intent="add n to the total") == 15
            written = c.call("cycles_list")[0]
            shown = cycle(c, written["id"])
            assert shown["persona"] == "BRICK" and shown["route"]["archetype"] == "technical"
            assert c.call("methods", target="counter_obj", selector="add_to_total")["persona"] == "BRICK"
            system = ScriptedMind.requests[0][1]["messages"][0]["content"]
            assert system.endswith("You are BRICK, writing this method for BatOS.")
    finally:
        srv.stop()


def test_a_facet_sent_directly_compiles_from_its_intent_once(image_path, mind_server):
    ScriptedMind.answers = {"reply": ["Be here now; the interview is only a conversation."]}
    srv = uvm(image_path, mind_server).start()
    try:
        with srv.client(timeout=60) as c:
            intent = c.get("robin_prototype_obj", "sage_facet_")
            assert isinstance(intent, str) and "present moment" in intent
            assert "interview" in c.send("robin_prototype_obj", "sage_facet_", "I fear tomorrow.")
            system = ScriptedMind.requests[-1][1]["messages"][0]["content"]
            assert system.startswith("You are ROBIN") and "present moment" in system
            c.send("robin_prototype_obj", "sage_facet_", "And the day after?")
            assert len(c.call("cycles_list")) == 1 and len(ScriptedMind.requests) == 2
            assert c.call("methods", target="robin_prototype_obj", selector="sage_facet_")["persona"] == "ROBIN"
    finally:
        srv.stop()


def test_chat_keeps_a_conversation_switches_persona_and_starts_anew(image_path, mind_server):
    import subprocess

    from conftest import BATOS

    answers(reply=["Check that the config file exists before reading it.",
                   "Feeling stuck on a missing config file is normal; you will get it working.",
                   "Write a test that deletes the config file and checks the defaults.",
                   "Testing the fix this way gives you confidence it keeps working.",
                   "Feeling anxious before an interview is natural and shows you care about it.",
                   "1. Prepare three stories. 2. Sleep well before the interview."])
    srv = uvm(image_path, mind_server).start()
    try:
        lines = "\n".join([TECHNICAL, "/persona brick", "And how do I test that fix in my script?", "/new",
                           "/persona", "I'm anxious about my interview tomorrow.", "/nonsense", "/quit"]) + "\n"
        out = subprocess.run([*BATOS, "chat", "--endpoint", srv.endpoint], input=lines, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("BRICK: ") == 3 and out.stdout.count("ROBIN: ") == 3, out.stdout
        assert out.stdout.splitlines()[4].startswith("ROBIN: Feeling anxious")  # /persona alone: the router leads
        assert "unknown command /nonsense" in out.stderr and "(a new conversation)" in out.stderr
        with srv.client() as c:
            listed = c.call("conversations_list")
            assert [x["exchanges"] for x in listed] == [2, 1]
            second = c.call("conversation_show", conversation=listed[0]["id"])["exchanges"][1]
            assert second["route"]["lead"] == "BRICK"
    finally:
        srv.stop()
