"""Every transition and failure path of the cognitive cycle, with a scripted (test-only) model."""

from __future__ import annotations

import threading

import pytest

from batos.image import open_image
from batos.image.objects import oid_text
from batos.llm.generation import BackendError
from batos.mind.cycle import CyclePolicy, CycleRunner, state_of
from batos.sandbox import run_method
from batos.sandbox.verify import default_pool

from conftest import in_transaction, opened_root

GOOD = "```python\ndef add_to_total(self, n):\n    self.total = self.total + n\n    self._p_changed = True\n    return self.total\n```"
NO_COVENANT = "def add_to_total(self, n):\n    self.total = self.total + n\n    return self.total\n"
WRONG = "def add_to_total(self, n):\n    return n\n"
UNSAFE = "def add_to_total(self, n):\n    return eval('1')\n"
PROSE = "I would add the number to the total."
EXAMPLE = {"slots": {"total": 10}, "args": [5], "result": 15, "after": {"total": 15}}


class Script:
    """Answers in order; an exception in the script is raised instead of answering."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = 0
        self.prompts = []
        self.options = []

    def __call__(self, messages, **options):
        self.calls += 1
        self.prompts.append(messages)
        self.options.append(options)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


@pytest.fixture
def image(tmp_path):
    with opened_root(tmp_path / "image.fs") as root:
        counter = root["genesis_obj"].clone()
        counter.name = "counter"
        counter.total = 10
        root["counter_obj"] = counter
    img = open_image(str(tmp_path / "image.fs"))
    yield img
    img.close()


def start(image, script, examples=(EXAMPLE,), **policy):
    runner = CycleRunner(image.db, script, CyclePolicy(backoff_base=0.001, **policy), model_name=lambda: "scripted")
    target = runner.read(lambda root: oid_text(root["counter_obj"]))
    cycle_id = runner.start_or_join(target, "add_to_total", [5], {}, "add the argument to total and return it", list(examples))
    return runner, cycle_id


class Installed:
    """A plain copy of an installed Method, readable after its connection closed."""

    def __init__(self, method):
        self.source, self.origin, self.cycle, self.persona = method.source, method.origin, method.cycle, method.persona
        self.version, self.model = method.version, getattr(method, "model", None)


def finish_event(runner, cycle_id) -> threading.Event:
    """Set once ``cycle_id`` stops running (finished, awaiting approval, or abandoned)."""
    done = threading.Event()
    runner.add_listener(lambda changed, state: changed == cycle_id and done.set(), on_finish=True)
    return done


def cycle(runner, cycle_id):
    def snapshot(root):
        found = root["active_cycles"][cycle_id]
        method = root["counter_obj"]._slots.get("add_to_total")
        return {
            "state": state_of(found),
            "slots": {k: v for k, v in found._slots.items() if isinstance(v, (str, int, float, type(None)))},
            "states": [t["state"] for t in found._slots["transitions"]],
            "attempts": [dict(a) for a in found._slots["attempts"]],
            "method": Installed(method) if method is not None else None,
            "total": root["counter_obj"].total,
        }
    return runner.read(snapshot)


def test_success_walks_every_state_and_installs_once(image):
    runner, cid = start(image, Script(GOOD))
    assert runner.run(cid) == "COMPLETE"
    seen = cycle(runner, cid)
    assert seen["states"] == ["IDLE", "DECOMPOSING", "DELEGATING", "SYNTHESIZING", "VALIDATING", "COMPLETE"]
    method = seen["method"]
    assert method.origin == "synthesized" and method.cycle == cid
    assert method.version == 1 and method.model == "scripted" and method.persona == "BRICK"
    assert seen["total"] == 10  # verification ran on a copy; the target was not touched
    assert runner.run(cid) == "COMPLETE"  # running it again installs nothing more
    assert cycle(runner, cid)["method"].version == 1
    runner.close()


def test_covenant_is_repaired_without_another_model_call(image):
    script = Script(NO_COVENANT)
    runner, cid = start(image, script)
    assert runner.run(cid) == "COMPLETE"
    assert script.calls == 1
    assert "self._p_changed = True" in cycle(runner, cid)["method"].source
    runner.close()


@pytest.mark.parametrize("bad, verdict", [(WRONG, "verification"), (UNSAFE, "Guardian"), (PROSE, "no function")])
def test_a_failure_is_fed_back_and_the_revision_succeeds(image, bad, verdict):
    script = Script(bad, GOOD)
    runner, cid = start(image, script)
    assert runner.run(cid) == "COMPLETE"
    seen = cycle(runner, cid)
    assert [a["verdict"].split(":")[0] if a["verdict"] else None for a in seen["attempts"]][0].startswith(verdict.split()[0])
    assert "rejected" in script.prompts[1][-1]["content"]  # the second prompt carries the feedback
    assert seen["slots"]["iteration"] == 2
    runner.close()


def test_iteration_cap_ends_in_failed_and_leaves_the_target_untouched(image):
    script = Script(*[f"def add_to_total(self, n):\n    return n + {i}\n" for i in range(3)])
    runner, cid = start(image, script, max_iterations=3)
    assert runner.run(cid) == "FAILED"
    seen = cycle(runner, cid)
    assert "after 3 iterations" in seen["slots"]["reason"] and script.calls == 3
    assert seen["method"] is None and seen["total"] == 10
    runner.close()


def test_a_repeated_candidate_is_not_validated_again_and_the_loop_goes_on(image):
    script = Script(WRONG, WRONG, GOOD)
    runner, cid = start(image, script)
    assert runner.run(cid) == "COMPLETE" and script.calls == 3
    verdicts = [a["verdict"] for a in cycle(runner, cid)["attempts"]]
    assert verdicts[1].startswith("the same function as attempt 1") and verdicts[2] == "passed"
    runner.close()


def test_two_repeats_in_a_row_stop_early(image):
    script = Script(WRONG, WRONG, WRONG, GOOD)
    runner, cid = start(image, script)
    assert runner.run(cid) == "FAILED"
    assert "repeated" in cycle(runner, cid)["slots"]["reason"] and script.calls == 3
    runner.close()


def test_transient_failures_are_retried_and_not_counted(image):
    naps = []
    script = Script(BackendError("timeout", transient=True), BackendError("502", transient=True), GOOD)
    runner, cid = start(image, script)
    runner.sleep = naps.append
    assert runner.run(cid) == "COMPLETE"
    assert script.calls == 3 and len(naps) == 2 and cycle(runner, cid)["slots"]["iteration"] == 1
    assert all(n >= 0 for n in naps)
    runner.close()


def test_transient_retries_are_capped_and_permanent_failures_end_the_cycle(image):
    runner, cid = start(image, Script(*[BackendError("down", transient=True)] * 3), max_transient_retries=2)
    runner.sleep = lambda s: None
    assert runner.run(cid) == "FAILED" and "down" in cycle(runner, cid)["slots"]["reason"]
    runner.close()
    runner, cid = start(image, Script(BackendError("bad request", transient=False)))
    assert runner.run(cid) == "FAILED"
    runner.close()


def test_manual_approval_waits_then_installs_or_rejects(image):
    runner, cid = start(image, Script(GOOD), approval="manual")
    assert runner.run(cid) == "AWAITING_APPROVAL"
    assert cycle(runner, cid)["method"] is None
    assert runner.decide(cid, approve=True) == "COMPLETE"
    assert cycle(runner, cid)["method"].version == 1
    with pytest.raises(ValueError):
        runner.decide(cid, approve=False)
    runner.close()
    with in_transaction(image) as root:
        del root["counter_obj"]._slots["add_to_total"]
    runner, cid = start(image, Script(GOOD), approval="manual")
    assert runner.run(cid) == "AWAITING_APPROVAL"
    assert runner.decide(cid, approve=False) == "FAILED"
    assert cycle(runner, cid)["method"] is None
    runner.close()


def test_two_senders_share_one_cycle(image):
    runner, first = start(image, Script(GOOD))
    target = runner.read(lambda root: oid_text(root["counter_obj"]))
    assert runner.start_or_join(target, "add_to_total", [1], {}) == first
    runner.close()


def test_a_cycle_interrupted_in_synthesizing_resumes_and_completes_once(image):
    class Crash(BaseException):
        pass

    runner, cid = start(image, Script(Crash()))
    with pytest.raises(Crash):
        runner.run(cid)
    assert cycle(runner, cid)["state"] == "SYNTHESIZING"
    runner.close()
    resumed = CycleRunner(image.db, Script(GOOD), CyclePolicy())
    assert resumed.unfinished() == [cid]
    assert resumed.run(cid) == "COMPLETE"
    assert resumed.unfinished() == []
    seen = cycle(resumed, cid)
    assert seen["states"].count("COMPLETE") == 1 and seen["method"].version == 1
    resumed.close()


def test_the_installed_method_answers_on_the_target(image):
    runner, cid = start(image, Script(GOOD))
    runner.run(cid)
    with in_transaction(image) as root:
        counter = root["counter_obj"]
        method = counter._slots["add_to_total"]
        assert run_method(default_pool(), "add_to_total", method.source, counter, [5], {}, 10.0) == 15
        assert counter.total == 15
    runner.close()


def test_an_unforeseen_error_fails_the_cycle_and_releases_waiters(image):
    runner, cid = start(image, Script(ValueError("bug in a step")))
    with pytest.raises(ValueError):
        runner.run(cid)
    waiter = finish_event(runner, cid)
    runner.abandon(cid, "internal error: ValueError: bug in a step")
    assert waiter.is_set()
    seen = cycle(runner, cid)
    assert seen["state"] == "FAILED" and "bug in a step" in seen["slots"]["reason"] and seen["method"] is None
    runner.close()


def test_prune_forgets_finished_cycles_but_keeps_open_ones_and_methods(image):
    runner, done = start(image, Script(GOOD))
    runner.run(done)
    target = runner.read(lambda root: oid_text(root["counter_obj"]))
    waiting = runner.start_or_join(target, "something_else", [], {})
    assert runner.prune(older_than_seconds=3600) == []  # finished just now: too young
    assert runner.prune() == [done]
    remaining = runner.read(lambda root: list(root["active_cycles"].keys()))
    assert remaining == [waiting]
    assert cycle_method_survives(runner)
    runner.close()


def cycle_method_survives(runner) -> bool:
    return runner.read(lambda root: root["counter_obj"]._slots["add_to_total"].version == 1)


def test_a_write_conflict_while_installing_is_retried_not_a_failure(image, monkeypatch):
    """A client writes the target between the cycle reading it and committing the install."""
    original = CycleRunner._install
    interfered = []

    def install_after_a_concurrent_write(self, root, cycle_obj):
        cycle_obj._slots["target"]._slots.get("add_to_total")  # the runner has read the target
        if not interfered:
            interfered.append(True)
            with in_transaction(image) as other:
                other["counter_obj"].colour = "red"  # commits a change to the same slots
        return original(self, root, cycle_obj)

    monkeypatch.setattr(CycleRunner, "_install", install_after_a_concurrent_write)
    runner, cid = start(image, Script(GOOD))
    assert runner.run(cid) == "COMPLETE"
    seen = cycle(runner, cid)
    assert seen["method"].version == 1 and interfered
    assert runner.read(lambda root: root["counter_obj"].colour) == "red"  # the other write stands too
    runner.close()


def test_the_prompt_names_real_parameters_and_revisions_sample():
    from batos.mind.synthesis import build_messages, sampling, signature

    brief = {"oid": "0x1", "name": "c", "selector": "scale", "args": [3], "kwargs": {}, "intent": "scale it",
             "examples": [{"args": [3], "kwargs": {"factor": 2}, "result": 6}], "slots": {}, "methods": [],
             "related_sources": []}
    assert signature(brief) == "def scale(self, value, factor=None)"
    prompt = build_messages(brief, [])[-1]["content"]
    assert "def scale(self, value, factor=None)" in prompt and "..." not in prompt.split("Write")[-1]
    first, second, third = sampling(1), sampling(2), sampling(3)
    assert first["temperature"] == 0.0 and second["temperature"] > 0 and second["seed"] != third["seed"]


def test_a_candidate_that_does_not_parse_gets_its_syntax_error_back(image):
    broken = "```python\ndef add_to_total(self, n)\n    return n\n```"
    script = Script(broken, GOOD)
    runner, cid = start(image, script)
    assert runner.run(cid) == "COMPLETE"
    verdict = cycle(runner, cid)["attempts"][0]["verdict"]
    assert "does not parse" in verdict and "line 1" in verdict
    assert "does not parse" in script.prompts[1][-1]["content"]  # the model is told
    assert script.options[0]["temperature"] == 0.0 and script.options[1]["temperature"] > 0
    runner.close()


def test_a_failing_example_is_shown_as_a_call_with_expected_and_actual(image):
    script = Script(WRONG, GOOD)
    runner, cid = start(image, script)
    assert runner.run(cid) == "COMPLETE"
    feedback = script.prompts[1][-1]["content"]
    assert "add_to_total(5)" in feedback and "returned 5" in feedback and "expected 15" in feedback
    runner.close()


def test_a_revision_samples_several_candidates_and_installs_the_first_that_passes(image):
    script = Script(WRONG, [WRONG, UNSAFE, GOOD, GOOD])
    runner, cid = start(image, script)
    assert runner.run(cid) == "COMPLETE" and script.calls == 2
    assert script.options[1]["samples"] >= 3 and script.options[1]["temperature"] > 0
    second = cycle(runner, cid)["attempts"][1]
    assert second["candidates_checked"] == 2  # the repeat of WRONG was skipped, UNSAFE failed, GOOD passed
    assert "self.total + n" in second["final_source"] and cycle(runner, cid)["method"].version == 1
    runner.close()


def test_a_slip_of_a_slot_name_is_repaired_without_another_model_call(image):
    """``self.totl`` where the slot is ``total``: renamed, verified and installed from one answer."""
    slip = "def add_to_total(self, n):\n    self.total = self.totl + n\n    self._p_changed = True\n    return self.total\n"
    script = Script(slip)
    runner, cid = start(image, script)
    assert runner.run(cid) == "COMPLETE" and script.calls == 1
    assert "self.totl" not in cycle(runner, cid)["method"].source
    runner.close()


def test_a_name_far_from_every_slot_is_not_guessed():
    from batos.mind.guardian import repair_slot_names

    source = "def mean(self):\n    return sum(self.score) / len(self.score)\n"
    repaired, renames = repair_slot_names(source, "mean", {"scores", "name"})
    assert renames == {"score": "scores"} and "self.scores" in repaired
    assert repair_slot_names("def mean(self):\n    return self.grades\n", "mean", {"scores", "name"}) is None
    assert repair_slot_names("def mean(self):\n    self.tally = 1\n    return self.tally\n", "mean", {"total"}) is None
    both = "def f(self):\n    return self.valu\n"  # as close to 'value' as to 'values': not guessed
    assert repair_slot_names(both, "f", {"value", "values"}) is None


@pytest.mark.parametrize("revision, why", [
    ("def add_to_total(self, n):\n    raise NotImplementedError('Verification: example 1: add_to_total(5)')\n",
     "only raises"),
    ("def add_to_total(self, n):\n    return 'example 1: add_to_total(5) on an object whose slots were'\n",
     "text of the feedback"),
])
def test_a_revision_that_pastes_the_feedback_back_is_refused_without_echo(image, revision, why):
    script = Script(WRONG, revision, GOOD)
    runner, cid = start(image, script)
    assert runner.run(cid) == "COMPLETE" and script.calls == 3
    second = cycle(runner, cid)["attempts"][1]
    assert why in second["verdict"] and "add_to_total(5)" not in second["verdict"]
    assert "add_to_total(5)" not in script.prompts[2][-1]["content"]  # the refusal shown to the model echoes nothing
    runner.close()


def test_examples_are_shown_as_calls_and_verdicts_name_only_the_slots_read(image):
    with in_transaction(image) as root:
        for i in range(12):
            setattr(root["counter_obj"], f"unrelated_{i}", i)
    script = Script(WRONG, GOOD)
    runner, cid = start(image, script)
    assert runner.run(cid) == "COMPLETE"
    prompt = script.prompts[0][-1]["content"]
    assert "Example: with total=10: add_to_total(5) -> 15; afterwards total is 15" in prompt
    assert '"slots"' not in prompt and '"result"' not in prompt
    feedback = script.prompts[1][-1]["content"].split("rejected:")[1]
    assert "unrelated_" not in feedback and "total" in feedback
    runner.close()


def test_a_revision_must_drop_a_name_the_object_does_not_understand(image):
    ghost = "def add_to_total(self, n):\n    return self.grades + n\n"
    ghost_again = "def add_to_total(self, n):\n    return self.grades + n + 0\n"
    script = Script(ghost, ghost_again, GOOD)
    runner, cid = start(image, script)
    assert runner.run(cid) == "COMPLETE" and script.calls == 3
    first, second = cycle(runner, cid)["attempts"][:2]
    assert "does not understand 'grades'" in first["verdict"]
    assert "still reads self.grades" in second["verdict"] and "validation_seconds" not in second
    runner.close()


def test_self_score_where_the_slot_is_scores_is_repaired_and_installed_from_one_answer(image):
    """The issue's own case: `average` reading `self.score` on an object whose slot is `scores`."""
    with in_transaction(image) as root:
        root["counter_obj"].scores = [2, 4, 6]
    slip = "def average(self):\n    return sum(self.score) / len(self.score)\n"
    script = Script(slip)
    runner = CycleRunner(image.db, script, CyclePolicy(backoff_base=0.001), model_name=lambda: "scripted")
    target = runner.read(lambda root: oid_text(root["counter_obj"]))
    cid = runner.start_or_join(target, "average", [], {}, "return the arithmetic mean of the scores slot",
                               [{"result": 4.0}])
    assert runner.run(cid) == "COMPLETE" and script.calls == 1
    runner.close()
    with in_transaction(image) as root:
        counter = root["counter_obj"]
        source = counter._slots["average"].source
        assert "self.scores" in source and "self.score)" not in source
        assert run_method(default_pool(), "average", source, counter, [], {}, 10.0) == 4.0
