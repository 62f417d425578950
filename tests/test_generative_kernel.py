"""_doesNotUnderstand_ end to end through a real UVM, with a scripted OpenAI-compatible model server
on 127.0.0.1 (deterministic answers), so every path a client meets can be asserted."""

from __future__ import annotations

import json
import time

import pytest

from batos.client import RemoteError

from conftest import EXAMPLE, ScriptedModel, make_counter, run_cli, uvm


def test_missing_method_is_written_installed_and_answered(image_path, model_server):
    make_counter(image_path)
    srv = uvm(image_path, model_server).start()
    events = []
    try:
        with srv.client(timeout=60) as c:
            assert c.send("counter_obj", "add_to_total", 5, intent="add the argument to total", examples=[EXAMPLE],
                          on_event=events.append) == 15
            assert len(ScriptedModel.requests) == 1
            assert c.send("counter_obj", "add_to_total", 1) == 16  # understood now: no model call
            assert len(ScriptedModel.requests) == 1
        states = [e["state"] for e in events if "state" in e]
        assert states[:1] == ["started"] and states[-1] == "COMPLETE" and "VALIDATING" in states
        prompt = ScriptedModel.requests[0]["messages"][-1]["content"]
        assert "add_to_total(5)" in prompt and "add the argument to total" in prompt and "total" in prompt
    finally:
        assert srv.stop() == 0
    srv = uvm(image_path, model_server, endpoint=srv.endpoint).start()
    e = ("--endpoint", srv.endpoint)
    try:
        with srv.client() as c:
            assert c.send("counter_obj", "add_to_total", 4) == 20  # survives the restart
        shown = json.loads(run_cli("methods", "counter_obj", "add_to_total", "--history", *e).stdout)
        assert shown["origin"] == "synthesized" and shown["cycle"] and shown["model"].startswith("scripted") and shown["history"] == []
        cycles = json.loads(run_cli("cycles", "list", *e).stdout)
        assert [c["state"] for c in cycles] == ["COMPLETE"]
        detail = json.loads(run_cli("cycles", "show", cycles[0]["id"], *e).stdout)
        assert detail["attempts"][0]["verdict"] == "passed" and detail["attempts"][0]["candidate"]
        # define a new version by hand, then roll back to the synthesized one
        redefined = run_cli("define", "counter_obj", "add_to_total",
                            r"def add_to_total(self, n):\n    return -1", *e)
        assert redefined.returncode == 0
        with srv.client() as c:
            assert c.send("counter_obj", "add_to_total", 1) == -1
        rolled = json.loads(run_cli("methods", "counter_obj", "add_to_total", "--rollback", "1", *e).stdout)
        assert rolled == {"selector": "add_to_total", "version": 3, "restored_from": 1}
        with srv.client() as c:
            assert c.send("counter_obj", "add_to_total", 1) == 21
        history = json.loads(run_cli("methods", "counter_obj", "add_to_total", "--history", *e).stdout)["history"]
        assert [h["version"] for h in history] == [1, 2]
    finally:
        srv.stop()


def test_failed_synthesis_tells_the_client_why_and_changes_nothing(image_path, model_server):
    make_counter(image_path)
    ScriptedModel.answers = [f"def add_to_total(self, n):\n    return n + {i}\n" for i in range(10)]
    srv = uvm(image_path, model_server, BATOS_MAX_ITERATIONS="3").start()
    try:
        with srv.client(timeout=60) as c:
            with pytest.raises(RemoteError) as caught:
                c.send("counter_obj", "add_to_total", 5, examples=[EXAMPLE])
            assert caught.value.code == "synthesis_failed" and "3 iterations" in caught.value.message
            assert "add_to_total" not in c.describe("counter_obj")["methods"]
            assert c.get("counter_obj", "total") == 10
        cli = run_cli("send", "counter_obj", "add_to_total", "5", "--example", "total=10; add_to_total(5) -> 15",
                      "--endpoint", srv.endpoint)
        assert cli.returncode == 1 and "synthesis_failed" in cli.stderr and "SYNTHESIZING" in cli.stderr
    finally:
        srv.stop()


def test_manual_approval_and_no_wait(image_path, model_server):
    make_counter(image_path)
    srv = uvm(image_path, model_server, BATOS_APPROVAL="manual").start()
    e = ("--endpoint", srv.endpoint)
    try:
        with srv.client(timeout=60) as c:
            queued = c.send("counter_obj", "add_to_total", 5, examples=[EXAMPLE], wait=False)
            assert queued["state"] == "queued"
            with pytest.raises(RemoteError) as caught:  # joins the same cycle, which then waits
                c.send("counter_obj", "add_to_total", 5)
            assert caught.value.code == "awaiting_approval" and queued["cycle"] in caught.value.message
            assert len(ScriptedModel.requests) == 1
        assert json.loads(run_cli("cycles", "approve", queued["cycle"], *e).stdout)["state"] == "COMPLETE"
        with srv.client() as c:
            assert c.send("counter_obj", "add_to_total", 5) == 15
        again = run_cli("cycles", "reject", queued["cycle"], *e)
        assert again.returncode == 1 and "bad_request" in again.stderr
        pruned = json.loads(run_cli("cycles", "prune", *e).stdout)
        assert pruned == {"pruned": [queued["cycle"]]}
        assert json.loads(run_cli("cycles", "list", *e).stdout) == []
        with srv.client() as c:
            assert c.send("counter_obj", "add_to_total", 5) == 20  # the method outlives its cycle
    finally:
        srv.stop()


def test_kill_9_in_synthesizing_resumes_and_installs_once(image_path, model_server):
    make_counter(image_path)
    ScriptedModel.delay = 3.0
    srv = uvm(image_path, model_server).start()
    with srv.client() as c:
        cycle = c.send("counter_obj", "add_to_total", 5, examples=[EXAMPLE], wait=False)["cycle"]
        deadline = time.monotonic() + 20
        while c.call("cycle_show", cycle=cycle)["state"] != "SYNTHESIZING" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.call("cycle_show", cycle=cycle)["state"] == "SYNTHESIZING"
    srv.kill()
    ScriptedModel.delay = 0.0
    srv = uvm(image_path, model_server, endpoint=srv.endpoint).start()
    try:
        with srv.client(timeout=60) as c:
            deadline = time.monotonic() + 60
            while c.call("cycle_show", cycle=cycle)["state"] != "COMPLETE" and time.monotonic() < deadline:
                time.sleep(0.1)
            shown = c.call("cycle_show", cycle=cycle)
            assert shown["state"] == "COMPLETE"
            assert [t["state"] for t in shown["transitions"]].count("COMPLETE") == 1
            method = c.call("methods", target="counter_obj", selector="add_to_total")
            assert method["version"] == 1 and method["cycle"] == cycle
            assert c.send("counter_obj", "add_to_total", 5) == 15
            assert len(c.call("cycles_list")) == 1
    finally:
        srv.stop()


def test_without_a_model_unknown_selectors_stay_not_understood(server):
    with server.client() as c:
        with pytest.raises(RemoteError) as caught:
            c.send("genesis_obj", "anything_new")
        assert caught.value.code == "not_understood"


def test_a_facet_calls_the_model_with_a_system_prompt_from_its_intent(image_path, model_server):
    ScriptedModel.answers = ["Persistence:\nroots hold through the frost"]
    srv = uvm(image_path, model_server).start()
    try:
        with srv.client(timeout=60) as c:
            with pytest.raises(RemoteError) as caught:
                c.send("genesis_obj", "poem_facet_", "persistence")
            assert caught.value.code == "synthesis_failed" and "intent" in caught.value.message
            answer = c.send("genesis_obj", "haiku_facet_", "persistence", intent="You are a poet who writes haiku.")
            assert "roots hold" in answer
            system = ScriptedModel.requests[-1]["messages"][0]
            assert system["role"] == "system" and "poet who writes haiku" in system["content"]
            assert ScriptedModel.requests[-1]["messages"][-1]["content"] == "persistence"
            assert len(ScriptedModel.requests) == 1  # writing the facet took no model call
            c.send("genesis_obj", "haiku_facet_", "winter", max_new_tokens=20)
            assert ScriptedModel.requests[-1]["max_tokens"] == 20
            method = c.call("methods", target="genesis_obj", selector="haiku_facet_")
            assert "self.infer_(prompt" in method["source"] and method["facet_system"]
    finally:
        srv.stop()
