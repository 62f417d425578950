"""The cognitive cycle: a durable state machine that turns a not-understood message into a method.

States are UvmObject prototypes in ``psm_prototypes_obj``; a cycle is a UvmObject in
``active_cycles`` whose ``synthesis_state*`` slot points at its state. Every transition is one
committed transaction, and the model is called with no transaction open. The loop:

    IDLE -> DECOMPOSING     snapshot the target into a mission brief
         -> DELEGATING      choose who writes it (persona, model)
         -> SYNTHESIZING    ask the model; take the function out of its answer
         -> VALIDATING      Guardian (covenant repaired without a model call), RestrictedPython,
                            verification in a limited subprocess against the examples
         -> COMPLETE        method installed in the same transaction
            | AWAITING_APPROVAL (manual approval) | back to SYNTHESIZING with the failure as
            feedback | FAILED (iteration cap, two revisions in a row repeating rejected candidates,
            permanent backend failure)

The first attempt is greedy; each revision samples several answers in one batched call (hotter
each time, with a seed of its own), so the revise loop explores instead of repeating itself; its
candidates are validated in turn and the first that passes is installed. A candidate equal to one
rejected before is not validated again; an attempt that brings nothing new counts as an iteration,
and the iteration cap bounds the loop.

Transient backend failures are retried with exponential backoff and jitter and do not count as
iterations; they too are capped. After a crash, every cycle not finished resumes from its last
committed state; install and COMPLETE share a transaction, so a method is installed once. Every
transaction goes through batos.image.transactions, so a write conflict is retried, not a failure.

A cycle record (a kernel object: only the kernel changes it) has these slots:

    cycle_id          12 hex digits, its key in ``active_cycles``
    synthesis_state*  the PSM state prototype it is in
    target, selector  the object that did not understand, and the message
    args, kwargs      the original call
    intent, examples  what the client said the method should do (examples may be empty)
    iteration         1 .. max_iterations
    attempts          one dict per model answer: iteration, prompt, answer (each at most 32 KiB),
                      candidate, verdict, generation_seconds, validation_seconds, final_source
                      (only when the Guardian's covenant repair changed the candidate)
    transitions       [{"state", "at"}], every state entered, in order
    created, updated  times (seconds since the epoch)
    brief             the mission brief built in DECOMPOSING
    persona, model    who wrote it (DELEGATING)
    approved_source   the source that passed validation (what approval installs, by digest)
    installed_version the version of the Method installed (COMPLETE)
    reason            why it FAILED
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import transaction
import ZODB
from persistent.list import PersistentList

from batos.errors import BatosError
from batos.image.objects import Method, UvmObject, oid_text, parents_of
from batos.image.protection import mark_kernel
from batos.image.transactions import read_root, run_in_transaction
from batos.image.values import ValueTooLarge, to_plain
from batos.image.genesis import PSM_STATES as STATES  # noqa: F401  (the states, for readers of this module)
from batos.image.genesis import TRAIT_PRIMITIVES
from batos.llm.generation import BackendError, Message
from batos.mind import guardian
from batos.mind.synthesis import build_messages, extract_function, extraction_problem, sampling
from batos.sandbox import SandboxPool
from batos.sandbox.host import digest_of
from batos.sandbox.verify import verify

log = logging.getLogger(__name__)

FINISHED = ("COMPLETE", "FAILED")
MAX_STORED_TEXT = 32 * 1024  # a model's answer (or a prompt) is kept once, and at most this long
STATE_SLOT = "synthesis_state*"
# (messages, temperature=, seed=, samples=, [expert=, max_new_tokens=, stream=]) -> answer(s)
Generate = Callable[..., "str | list[str]"]
# (conversations, [expert=, max_new_tokens=]) -> one answer per conversation
GenerateMany = Callable[..., list[str]]
Listener = Callable[[str, str], None]  # (cycle id, state)
Step = Callable[[str], None]  # does the work of the state a cycle is in, and moves it on
# mission brief -> (persona who writes the method, the route that chose it or None)
ChoosePersona = Callable[[dict], "tuple[str, dict | None]"]
METHOD_KIND = "method"


@dataclass
class CyclePolicy:
    max_iterations: int = 5
    max_transient_retries: int = 5
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    approval: str = "auto"  # or "manual"
    persona: str = "BRICK"
    max_source_bytes: int = guardian.MAX_SOURCE_BYTES
    verify_seconds: float = 10.0  # each example's time budget in the sandbox


def is_facet(selector: str) -> bool:
    return selector.endswith("_facet_")


def facet_system(intent: str, identity: Any = None) -> str:
    """The system prompt of a cognitive facet, built from its intent (and the identity of the
    persona it belongs to, when it has one)."""
    speaker = f"You are {identity.strip()}\n" if isinstance(identity, str) and identity.strip() else ""
    return f"{speaker}{intent.strip()}\nAnswer the user's request in that role, briefly."


def facet_source(selector: str, intent: str, identity: Any = None) -> str:
    """What a facet does, as source: call the object's model with the facet's system prompt."""
    return (f"def {selector}(self, prompt, **options):\n"
            f"    return self.infer_(prompt, system={facet_system(intent, identity)!r}, **options)\n")


def state_of(cycle: UvmObject) -> str:
    return cycle._slots[STATE_SLOT].name


def kind_of(cycle: UvmObject) -> str:
    """``method`` (writes a missing method) or another kind registered with the runner."""
    return cycle._slots.get("kind", METHOD_KIND)


def source_digest(source: str | None) -> str | None:
    """What `batos cycles approve` names: the digest of the exact source that would be installed."""
    return digest_of(source) if source else None


def bounded(text: str | None, limit: int = MAX_STORED_TEXT) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"\n... ({len(text) - limit} more characters not kept)"


def summary(cycle: UvmObject, detail: bool = False) -> dict[str, Any]:
    """A cycle as plain data (with every attempt when ``detail``)."""
    slots = cycle._slots
    data = {
        "id": slots["cycle_id"], "oid": oid_text(cycle), "state": state_of(cycle), "target": oid_text(slots["target"]),
        "selector": slots["selector"], "iteration": slots["iteration"], "reason": slots.get("reason"),
        "created": slots["created"], "updated": slots["updated"], "installed_version": slots.get("installed_version"),
        "transitions": [dict(t) for t in slots["transitions"]],
        "approved_digest": source_digest(slots.get("approved_source")),
    }
    data["kind"] = kind_of(cycle)
    data["persona"] = slots.get("persona")
    data["owner"] = slots.get("owner")  # the key of who opened it (their brief), when recorded
    if detail:
        data["approved_source"] = slots.get("approved_source")
        data["brief"] = to_plain(slots.get("brief"))
        data["route"] = to_plain(slots.get("route"))
        data["attempts"] = [dict(a) for a in slots["attempts"]]
        for name in ("question", "role", "depth", "context", "prior", "plan", "facet_answers", "reply",
                     "grounding"):
            if name in slots:
                data[name] = to_plain(slots[name])
    return data


def mission_brief(target: UvmObject, selector: str, args: list, kwargs: dict, intent: str | None,
                  examples: list[dict]) -> dict[str, Any]:
    """What the model is told about the target: data slots, known methods, related sources."""
    data = {name: _brief_value(value) for name, value in target._slots.items()
            if name != "parent*" and not isinstance(value, Method)}
    methods, related = [], []
    for holder in [target, *parents_of(target)]:
        for name, value in holder._slots.items():
            if isinstance(value, Method) and not name.startswith("_"):
                methods.append(name)
                if value.origin != "primitive" and len(related) < 3:
                    related.append(value.source)
    return {"oid": oid_text(target), "name": data.get("name"), "selector": selector, "args": list(args),
            "kwargs": dict(kwargs), "intent": intent, "examples": list(examples), "slots": data,
            "methods": sorted(set(methods)), "related_sources": related}


def _brief_value(value: Any) -> Any:
    try:
        return to_plain(value, max_nodes=2000)
    except ValueTooLarge:
        return {"$repr": "(too large to show)"}


class NotAwaitingApproval(BatosError, ValueError):
    code = "bad_request"


class CycleRunner:
    """Runs cycles one at a time in a thread of its own, with its own connection."""

    def __init__(self, db: ZODB.DB, generate: Generate, policy: CyclePolicy | None = None,
                 model_name: Callable[[], str] | None = None, sleep: Callable[[float], None] = time.sleep,
                 sandbox: SandboxPool | None = None, generate_many: GenerateMany | None = None,
                 experts: Callable[[], set[str]] | None = None, choose_persona: ChoosePersona | None = None,
                 recall: Callable[[str, str | None], list[dict]] | None = None):
        self.sandbox = sandbox  # where candidates are verified (None: the process's default pool)
        self.generate = generate
        self.generate_many = generate_many or (lambda conversations, **options: [
            self._first(generate(messages, **options)) for messages in conversations])
        self.experts = experts or set  # the experts the model can apply now
        self.choose_persona = choose_persona or (lambda brief: (self.policy.persona, None))
        self.recall = recall  # (mission, the cycle's owner): memory's chunks on it of that owner's
        self.streams: dict[str, Callable[[str], None]] = {}  # cycle id -> who gets its text as it comes
        self.policy = policy or CyclePolicy()
        self.model_name = model_name or (lambda: "unknown")
        self.sleep = sleep
        self.db = db
        self._manager = transaction.TransactionManager(explicit=True)
        self._connection = db.open(transaction_manager=self._manager)
        self._lock = threading.RLock()  # guards the runner's connection, one transaction at a time
        self._running = threading.RLock()  # one cycle at a time (a cycle may run another inside it)
        self._listeners: list[Listener] = []
        self._finish_listeners: list[Listener] = []
        self._kinds: dict[str, dict[str, Step]] = {METHOD_KIND: {
            "IDLE": self.decompose, "DECOMPOSING": self.delegate, "DELEGATING": self.synthesize,
            "SYNTHESIZING": self.synthesize, "VALIDATING": self.validate}}

    def register_kind(self, kind: str, steps: dict[str, Step]) -> None:
        """Cycles whose ``kind`` slot is ``kind`` run ``steps[state]`` in each unfinished state."""
        self._kinds[kind] = steps

    @staticmethod
    def _first(answer: "str | list[str]") -> str:
        return answer[0] if isinstance(answer, list) else answer

    # --- the cycle ------------------------------------------------------------------------------

    def run(self, cycle_id: str) -> str:
        """Drive one cycle until it finishes or waits for approval; return its state."""
        with self._running:
            while True:
                kind, state = self.read_cycle(cycle_id, lambda cycle: (kind_of(cycle), state_of(cycle)))
                if state in FINISHED or state == "AWAITING_APPROVAL":
                    self._finished(cycle_id, state)
                    return state
                self._kinds[kind][state](cycle_id)

    def decompose(self, cycle_id: str) -> None:
        def step(root, cycle):
            s = cycle._slots
            s["brief"] = mission_brief(s["target"], s["selector"], s["args"], s["kwargs"], s["intent"], s["examples"])
            self.move(root, cycle, "DECOMPOSING")
        self.change(cycle_id, step)

    def delegate(self, cycle_id: str) -> None:
        brief, owner = self.read_cycle(cycle_id, lambda cycle: (to_plain(cycle._slots["brief"]),
                                                                 cycle._slots.get("owner")))
        persona, route = self.choose_persona(brief)  # no transaction is open here
        knowledge = self._knowledge_for(brief, owner)

        def step(root, cycle):
            if knowledge:
                cycle._slots["brief"] = {**to_plain(cycle._slots["brief"]), "knowledge": knowledge}
            cycle._slots["persona"] = persona
            cycle._slots["route"] = route
            cycle._slots["model"] = self.model_name()
            self.move(root, cycle, "DELEGATING")
        self.change(cycle_id, step)

    def _knowledge_for(self, brief: dict[str, Any], owner: str | None) -> list[dict[str, str]]:
        """Up to 2 chunks the memory of the cycle's owner holds on the mission (facets are
        compiled from their intent alone)."""
        if self.recall is None or is_facet(brief["selector"]):
            return []
        try:
            hits = self.recall(f"{brief['selector'].replace('_', ' ')}: {brief.get('intent') or ''}", owner)
        except Exception:  # memory helps a mission; it is never a reason to fail one
            log.exception("recalling memory for %s failed", brief["selector"])
            return []
        return [{"source": h["source"], "text": h["text"][:600]} for h in hits[:2]]

    def synthesize(self, cycle_id: str) -> None:
        def enter(root, cycle):
            if state_of(cycle) != "SYNTHESIZING":
                self.move(root, cycle, "SYNTHESIZING")
            return (to_plain(cycle._slots["brief"]), [dict(a) for a in cycle._slots["attempts"]],
                    cycle._slots["iteration"], cycle._slots.get("persona"))
        brief, attempts, iteration, persona = self.change(cycle_id, enter)
        if is_facet(brief["selector"]):
            return self._write_facet(cycle_id, brief)
        messages = build_messages(brief, attempts, persona)
        options = sampling(iteration)
        if persona in self.experts():
            options["expert"] = persona
        started = time.perf_counter()
        try:
            answers = self.generate_with_retries(messages, options)  # no transaction is open here
        except BackendError as exc:
            return self.fail(cycle_id, f"the language model failed: {exc}")
        seconds = time.perf_counter() - started
        candidates, verdict = self._new_candidates(answers, brief["selector"], attempts)

        def record(root, cycle):
            cycle._slots["attempts"].append({
                "iteration": cycle._slots["iteration"], "prompt": bounded(messages[-1]["content"]),
                "answer": bounded(answers[0]), "candidate": candidates[0] if candidates else None,
                "alternatives": candidates[1:], "verdict": verdict, "repeat": verdict is not None and "same function" in verdict,
                "temperature": options["temperature"], "generation_seconds": round(seconds, 3),
            })
            if verdict is None:
                self.move(root, cycle, "VALIDATING")
        self.change(cycle_id, record)
        if verdict is not None:
            self._revise_or_fail(cycle_id)

    def _new_candidates(self, answers: list[str], selector: str, attempts: list[dict]) -> tuple[list[str], str | None]:
        """The functions in ``answers`` not tried before (in order), or none and why."""
        tried = {c for a in attempts for c in (a.get("candidate"), *a.get("alternatives", ())) if c}
        found, first_problem, earlier = [], None, None
        for answer in answers:
            candidate = extract_function(answer, selector)
            if candidate is None:
                first_problem = first_problem or extraction_problem(answer, selector)
            elif len(candidate.encode()) > self.policy.max_source_bytes:
                first_problem = first_problem or f"the function is over {self.policy.max_source_bytes} bytes; write a shorter one"
            elif candidate in tried:  # rejected before: no need to validate it again
                earlier = earlier or next(a for a in attempts if candidate in (a.get("candidate"), *a.get("alternatives", ())))
            elif (problem := unchanged_by_feedback(candidate, selector, attempts)) is not None:
                first_problem = first_problem or problem
            elif candidate not in found:
                found.append(candidate)
        if found:
            return found, None
        if earlier is not None:
            return [], f"the same function as attempt {earlier['iteration']}, rejected then: {earlier['verdict']}"
        return [], first_problem

    def _write_facet(self, cycle_id: str, brief: dict) -> None:
        """A facet needs no model to write it: its source follows from the intent."""
        if not brief.get("intent"):
            return self.fail(cycle_id, "a facet (a selector ending in _facet_) needs an intent: what the model should be")
        def record(root, cycle):
            cycle._slots["attempts"].append({"iteration": 1, "prompt": None, "answer": None, "generation_seconds": 0.0,
                                             "candidate": facet_source(brief["selector"], brief["intent"], brief["slots"].get("identity")),
                                             "verdict": None})
            self.move(root, cycle, "VALIDATING")
        self.change(cycle_id, record)

    def validate(self, cycle_id: str) -> None:
        brief, candidates = self.change(cycle_id, lambda root, cycle: (
            to_plain(cycle._slots["brief"]),
            [cycle._slots["attempts"][-1]["candidate"], *cycle._slots["attempts"][-1].get("alternatives", ())]))
        started = time.perf_counter()
        verdicts = []
        for candidate in candidates:  # in turn; the first that passes is the one installed
            source, verdict = self._check(candidate, brief)
            verdicts.append(verdict)
            if verdict is None:
                break
        verdict = None if verdicts[-1] is None else verdicts[0] + (
            f" (and {len(verdicts) - 1} other sampled candidate(s) failed too)" if len(verdicts) > 1 else "")

        def record(root, cycle) -> bool:
            attempts = cycle._slots["attempts"]
            attempt = dict(attempts[-1], verdict=verdict or "passed", validation_seconds=round(time.perf_counter() - started, 3),
                           candidates_checked=len(verdicts))
            if verdict is None and source != candidates[0]:  # repaired, or a later sample
                attempt["final_source"] = source
            attempts[-1] = attempt
            if verdict is not None:
                return False
            cycle._slots["approved_source"] = source
            if self.policy.approval == "manual":
                self.move(root, cycle, "AWAITING_APPROVAL")
            else:
                self._install(root, cycle)
            return True
        if not self.change(cycle_id, record):
            self._revise_or_fail(cycle_id)

    def _check(self, candidate: str, brief: dict) -> tuple[str, str | None]:
        """(source as it would be installed, None) or (candidate, why it was refused)."""
        selector = brief["selector"]
        try:
            guardian.audit(candidate, selector)
        except guardian.CovenantViolationError as exc:
            repaired = guardian.repair_covenant(candidate, selector)
            if repaired is None:
                return candidate, f"Guardian: {exc}"
            candidate = repaired  # the deterministic fix costs no model call
            try:
                guardian.audit(candidate, selector)
            except guardian.GuardianError as exc:
                return candidate, f"Guardian: {exc}"
        except guardian.GuardianError as exc:
            return candidate, f"Guardian: {exc}"
        if is_facet(selector):
            return candidate, None  # written by BatOS, not the model; its call runs outside the process
        examples = brief["examples"] or [{"args": brief["args"], "kwargs": brief["kwargs"]}]
        known = {*brief["slots"], *brief.get("methods", ()), *TRAIT_PRIMITIVES,
                 *(name for example in examples for name in (example.get("slots") or {}))}
        renamed = guardian.repair_slot_names(candidate, selector, known)
        if renamed is not None:  # a slip of a slot's name costs no model call either
            log.info("candidate %s: renamed %s", selector, ", ".join(f"self.{a} -> self.{b}" for a, b in renamed[1].items()))
            candidate = renamed[0]
            try:
                guardian.audit(candidate, selector)  # what is installed is always what was audited
            except guardian.GuardianError as exc:
                return candidate, f"Guardian: {exc}"
        reads = guardian.self_reads(guardian.the_function(candidate, selector))
        result = verify(candidate, selector, brief["slots"], examples, seconds=self.policy.verify_seconds, shown_slots=reads,
                        oid=brief["oid"], pool=self.sandbox)
        return candidate, None if result.ok else f"verification: {result.message}"

    def _revise_or_fail(self, cycle_id: str) -> None:
        self.change(cycle_id, self._revise_or_fail_step)

    def _revise_or_fail_step(self, root, cycle: UvmObject) -> None:
        attempts = cycle._slots["attempts"]
        if len(attempts) >= 3 and all(attempts[i].get("repeat") for i in (-1, -2)):
            # even sampling brings back what was rejected: the model is stuck
            return self.move(root, cycle, "FAILED", f"the model repeated earlier candidates twice in a row; last verdict: {attempts[-1]['verdict']}")
        if cycle._slots["iteration"] >= self.policy.max_iterations:
            return self.move(root, cycle, "FAILED", f"no valid method after {self.policy.max_iterations} iterations; last verdict: {attempts[-1]['verdict']}")
        cycle._slots["iteration"] += 1
        self.move(root, cycle, "SYNTHESIZING")

    def generate_with_retries(self, messages: list[Message], options: dict[str, Any]) -> list[str]:
        answers = self.with_retries(lambda: self.generate(messages, **options))
        return answers if isinstance(answers, list) else [answers]

    def with_retries(self, call: Callable[[], Any]) -> Any:
        """``call()``, retried with backoff and jitter while it fails transiently (up to the cap);
        a permanent failure, or the last transient one, is raised."""
        for retry in range(self.policy.max_transient_retries + 1):
            try:
                return call()
            except BackendError as exc:
                if not exc.transient or retry == self.policy.max_transient_retries:
                    raise
                delay = random.uniform(0, min(self.policy.backoff_cap, self.policy.backoff_base * 2 ** retry))
                log.warning("transient backend failure (%s); retry %d in %.1f s", exc, retry + 1, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")

    def _install(self, root, cycle: UvmObject) -> None:
        """Install the approved source and move to COMPLETE, in the caller's one transaction."""
        s = cycle._slots
        target, selector = s["target"], s["selector"]
        current = target._slots.get(selector)
        provenance = {"persona": s.get("persona"), "cycle": s["cycle_id"]}
        if is_facet(selector):
            provenance["facet_system"] = facet_system(s["intent"], target._slots.get("identity"))
        if isinstance(current, Method):
            method = current.successor(s["approved_source"], origin="synthesized", **provenance)
        else:
            method = Method(selector, s["approved_source"], origin="synthesized", **provenance)
        method.model = s["model"] = self.model_name()  # by now the model that wrote it is loaded
        if is_facet(selector):
            method.facet_intent = s["intent"]
        target._slots[selector] = method
        s["installed_version"] = method.version
        self.move(root, cycle, "COMPLETE")

    def fail(self, cycle_id: str, reason: str) -> None:
        """Move the cycle to FAILED with ``reason``, in a transaction of its own."""
        self.change(cycle_id, lambda root, cycle: self.move(root, cycle, "FAILED", reason))

    def move(self, root, cycle: UvmObject, state: str, reason: str | None = None) -> None:
        """Enter ``state`` (recorded in ``transitions``) within the caller's transaction; listeners
        hear of it once that transaction commits."""
        s = cycle._slots
        s[STATE_SLOT] = root["psm_prototypes_obj"]._slots[state]
        s["updated"] = time.time()
        s["transitions"].append({"state": state, "at": s["updated"]})
        if reason:
            s["reason"] = reason
        log.info("cycle %s (%s): %s%s", s["cycle_id"], s["selector"], state, f" ({reason})" if reason else "")
        cycle_id = s["cycle_id"]
        transaction_manager = self._manager
        transaction_manager.get().addAfterCommitHook(lambda ok: ok and self._notify(cycle_id, state))

    # --- starting, waiting, approving --------------------------------------------------------------

    def start_or_join(self, target_oid: str, selector: str, args: list, kwargs: dict,
                      intent: str | None = None, examples: list | None = None,
                      may_start: Callable[[int, int], None] | None = None, opened_by: str = "",
                      owner: str | None = None) -> str:
        """The open cycle for (target, selector), or a new one in IDLE; its id.

        Before a new cycle is made, ``may_start(open cycles, of them opened by opened_by)`` may
        refuse by raising; the new cycle records ``opened_by`` (who asked, for per-client limits)
        and, when given, its ``owner`` (a principal's key: what the asker put in the cycle, their
        arguments, intent and memory, is theirs; others who join it get only its outcome).
        """
        def start(root) -> str:
            open_cycles = own_open = 0
            for cycle in root["active_cycles"].values():
                s = cycle._slots
                if state_of(cycle) in FINISHED:
                    continue
                open_cycles += 1
                own_open += bool(opened_by) and s.get("opened_by") == opened_by
                if oid_text(s["target"]) == target_oid and s["selector"] == selector:
                    return s["cycle_id"]
            if may_start is not None:
                may_start(open_cycles, own_open)
            target = self._connection.get(int(target_oid, 16).to_bytes(8, "big"))
            cycle_id = uuid.uuid4().hex[:12]
            now = time.time()
            root["active_cycles"][cycle_id] = UvmObject(
                cycle_id=cycle_id, target=target, selector=selector, args=list(args), kwargs=dict(kwargs),
                intent=intent, examples=list(examples or []), iteration=1, attempts=PersistentList(),
                transitions=[{"state": "IDLE", "at": now}], created=now, updated=now, opened_by=opened_by,
                **{STATE_SLOT: root["psm_prototypes_obj"]._slots["IDLE"]},
            )
            if owner is not None:
                root["active_cycles"][cycle_id]._slots["owner"] = owner
            mark_kernel(root["active_cycles"][cycle_id])
            return cycle_id
        return self.transact(start)

    def unfinished(self) -> list[str]:
        """Cycles to resume after a restart (not finished, not waiting for approval)."""
        return self.read(lambda root: [c._slots["cycle_id"] for c in (root.get("active_cycles") or {}).values()
                                       if state_of(c) not in (*FINISHED, "AWAITING_APPROVAL")])

    def decide(self, cycle_id: str, approve: bool, digest: str | None = None) -> str:
        """Approve (install) or reject a cycle waiting for approval; its new state.

        With ``digest``, approval installs only the source whose sha256 it is (what was shown).
        """
        def step(root, cycle) -> None:
            if state_of(cycle) != "AWAITING_APPROVAL":
                raise NotAwaitingApproval(f"cycle {cycle_id} is {state_of(cycle)}, not AWAITING_APPROVAL")
            shown = source_digest(cycle._slots.get("approved_source"))
            if approve and digest is not None and digest != shown:
                raise BatosError(f"cycle {cycle_id}'s source has digest {shown}, not {digest}: "
                                 "show it again and approve what you see", code="conflict")
            if approve:
                self._install(root, cycle)
            else:
                self.move(root, cycle, "FAILED", "rejected by the architect")
        with self._running:
            self.change(cycle_id, step)
            state = self.read_cycle(cycle_id, state_of)
            self._finished(cycle_id, state)
            return state

    def abandon(self, cycle_id: str, reason: str) -> None:
        """End a cycle that failed in an unforeseen way: FAILED, and its waiters told."""
        try:
            self.fail(cycle_id, reason)
        finally:
            self._finished(cycle_id, "FAILED")

    def prune(self, older_than_seconds: float = 0.0) -> list[str]:
        """Forget finished cycles last changed longer ago than ``older_than_seconds``; their ids.

        Installed methods keep the id of the cycle that wrote them; only the record goes.
        """
        limit = time.time() - older_than_seconds

        def prune(root) -> list[str]:
            cycles = root["active_cycles"]
            doomed = [cid for cid, c in cycles.items() if state_of(c) in FINISHED and c._slots["updated"] <= limit]
            for cycle_id in doomed:
                del cycles[cycle_id]
            return doomed
        return self.transact(prune)

    def _finished(self, cycle_id: str, state: str) -> None:
        self._tell(self._finish_listeners, cycle_id, state)

    def add_listener(self, listener: Listener, on_finish: bool = False) -> None:
        """``listener(cycle_id, state)`` after every committed transition, or (``on_finish``) once
        a cycle stops running: finished, awaiting approval, or abandoned."""
        (self._finish_listeners if on_finish else self._listeners).append(listener)

    def remove_listener(self, listener: Listener) -> None:
        for listeners in (self._listeners, self._finish_listeners):
            with contextlib.suppress(ValueError):
                listeners.remove(listener)

    def _notify(self, cycle_id: str, state: str) -> None:
        self._tell(self._listeners, cycle_id, state)

    @staticmethod
    def _tell(listeners: list[Listener], cycle_id: str, state: str) -> None:
        for listener in list(listeners):
            try:
                listener(cycle_id, state)
            except Exception:
                log.exception("a cycle listener failed on %s -> %s", cycle_id, state)

    def read(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(root)`` in a read-only transaction of a connection of its own (never waits for a
        running cycle)."""
        return read_root(self.db, fn)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._connection.close()

    # --- transactions (also what the steps of other kinds of cycle build on) --------------------------

    def transact(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(root)`` in one committed transaction of the runner's connection; conflicts retried."""
        with self._lock:
            return run_in_transaction(self._manager, lambda: fn(self._connection.root()))

    def change(self, cycle_id: str, fn: Callable[[Any, UvmObject], Any]) -> Any:
        """``fn(root, cycle)`` in one committed transaction; conflicts retried."""
        def in_cycle(root):
            cycle = root["active_cycles"].get(cycle_id)
            if cycle is None:
                raise KeyError(f"no cycle {cycle_id}")
            return fn(root, cycle)
        return self.transact(in_cycle)

    def read_cycle(self, cycle_id: str, fn: Callable[[UvmObject], Any]) -> Any:
        """``fn(cycle)`` in a read-only transaction (see ``read``)."""
        return self.read(lambda root: fn(root["active_cycles"][cycle_id]))


NOT_UNDERSTOOD = re.compile(r"does not understand '(\w+)'")


def unchanged_by_feedback(candidate: str, selector: str, attempts: list[dict]) -> str | None:
    """Why a revision is refused before it is run, or None: it only raises, it pastes the feedback
    back, or it still reads a name a verdict said the object does not understand. The reason
    never quotes the feedback (a model echoes what it is shown)."""
    if not attempts:
        return None
    try:
        function = guardian.the_function(candidate, selector)
    except guardian.GuardianError:
        return None  # the audit says what is wrong with its shape
    verdicts = [a["verdict"] for a in attempts if a.get("verdict")]
    if guardian.only_raises(function):
        return "the method only raises an exception; it must compute and return the result"
    if guardian.echoes(function, verdicts):
        return "the method returns or raises the text of the feedback; it must compute the result instead"
    missing = {name for verdict in verdicts for name in NOT_UNDERSTOOD.findall(verdict)}
    still = sorted(missing & guardian.self_reads(function))
    if still:
        return (f"the method still reads self.{still[0]}, which the object does not have; "
                "use only the slots listed above")
    return None
