"""The Synaptic Cycle: how one persona answers, durably, on the cognitive cycle's machinery.

An answer is a cycle of kind ``answer`` in ``active_cycles``, run by the same CycleRunner as the
method-writing cycle (same states, one committed transaction per transition, resumed after a
crash, no transaction open across a model call, transient failures retried):

    IDLE -> DECOMPOSING   a plan: which pillars (facets) help, and a sub-question for each, as JSON
                          checked against a schema. A bad plan is fed back once; a second bad plan,
                          a ``direct`` depth, or a persona without facets answers directly.
         -> DELEGATING    each facet of the plan answers its sub-question, all in one batched
                          generation under the persona's expert. A facet slot still holding its
                          intent is compiled first (a method cycle, run here). Facets that fail are
                          recorded and left out.
         -> SYNTHESIZING  the reply: woven from the facets' notes in the persona's voice (or
                          direct), streamed to whoever asked.
         -> VALIDATING    the quality gate: not empty, bounded, on topic, no prompt text leaked.
                          A failure revises once (back to SYNTHESIZING, sampled); a second
                          failure falls back to a plain answer (no facets, no example), which is
                          kept unless it is empty: only an empty reply ends in FAILED.
         -> COMPLETE      in the same transaction, the reply becomes the conversation's turn.

An answer cycle's slots, besides the runner's own (cycle_id, synthesis_state*, transitions,
created, updated, iteration, attempts, reason): kind, target (the persona prototype), selector
(``answer``), persona, role (lead, partner, closer), question, depth, context (earlier exchanges),
prior (this exchange's turns so far), conversation and turn (where the reply goes), plan,
plan_attempts, facet_answers, reply.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from persistent.list import PersistentList

from batos.image.objects import Method, UvmObject, oid_text
from batos.image.protection import mark_kernel, owner_key
from batos.image.values import to_plain
from batos.llm.embeddings import Embedder
from batos.llm.generation import BackendError
from batos.mind import conversations
from batos.mind.answer_prompts import (CLOSING_TASK, LIST_MARKER, PARTNER_TASKS, BadPlan, as_prose, facet_messages,
                                       parse_plan, persona_system, plan_messages, reply_messages)
from batos.mind.codex import persona_root_name
from batos.mind.cycle import STATE_SLOT, CycleRunner, bounded, is_facet, state_of
from batos.principals import OWNER

log = logging.getLogger(__name__)

KIND = "answer"
ROLES = ("lead", "partner", "closer")


@dataclass
class AnswerPolicy:
    plan_tokens: int = 160
    facet_tokens: int = 96
    reply_tokens: int = 160
    max_plan_attempts: int = 2
    max_revisions: int = 1
    max_reply_chars: int = 4000
    min_reply_words: int = 3
    on_topic_similarity: float = 0.1
    leak_words: int = 8  # this many words in a row from the prompt's instructions is a leak
    repeat_words: int = 10  # this many words in a row from an earlier turn is a repeat
    prose_only: tuple[str, ...] = ("ROBIN",)  # personas whose codex says: never code or lists


def persona_codex(persona: UvmObject) -> dict[str, Any]:
    """A persona's codex as plain data; each facet as ``{"intent", "system", "version"}``, where
    ``system`` (the compiled facet's system prompt) and ``version`` are None until it is compiled."""
    s = persona._slots
    facets = {}
    for name, value in sorted(s.items()):
        if is_facet(name) and isinstance(value, str):
            facets[name] = {"intent": value, "system": None, "version": None}
        elif is_facet(name) and isinstance(value, Method) and value.facet_system:
            facets[name] = {"intent": value.facet_intent or value.facet_system, "system": value.facet_system,
                            "version": value.version}
    return {"name": s.get("name"), "identity": s.get("identity"), "mandate": s.get("mandate"),
            "voice": s.get("voice"), "expert": s.get("expert"), "protocols": to_plain(s.get("protocols")),
            "example": to_plain(s.get("example")),
            "facets": facets}


Recall = Callable[..., list[dict[str, Any]]]  # (question, "documents" | "turns", excluding=prefix) -> hits
GROUNDED = {"BABS": "documents", "ROBIN": "turns"}  # who looks in memory, and in which part
GENERAL_KNOWLEDGE = "(General knowledge, not from your notes.)"
SAYS_GENERAL_KNOWLEDGE = re.compile(r"general knowledge|not (?:from|in) your (?:notes|documents)", re.I)
GROUNDING_HITS = 3
MAX_GROUNDING_CHARS = 600


def turn_source_prefix(cycle: UvmObject) -> str:
    """How memory names the turns of the exchange ``cycle`` answers in (see MindService)."""
    conversation = cycle._slots["conversation"]
    exchange = conversation._slots["turns"][cycle._slots["turn"]]["exchange"]
    return conversations.turn_source(conversation._slots["conversation_id"], exchange)


def sources_of(grounding: list[dict[str, Any]]) -> list[str]:
    """The distinct sources a turn was grounded in, in the order they were shown."""
    return list(dict.fromkeys(g["source"] for g in grounding))


class SynapticCycle:
    """The steps of an answer cycle, registered with ``runner``."""

    def __init__(self, runner: CycleRunner, embedder: Embedder, policy: AnswerPolicy | None = None,
                 recall: Recall | None = None):
        self.runner = runner
        self.embedder = embedder
        self.policy = policy or AnswerPolicy()
        self.recall = recall
        runner.register_kind(KIND, {"IDLE": self.begin, "DECOMPOSING": self.plan, "DELEGATING": self.delegate,
                                    "SYNTHESIZING": self.weave, "VALIDATING": self.gate})

    # --- starting -------------------------------------------------------------------------------

    def start(self, root, conversation: UvmObject, exchange: int, persona_name: str, role: str, depth: str,
              prior: list[dict[str, str]]) -> str:
        """A new answer cycle in IDLE and its turn in ``conversation``, in the caller's transaction;
        its id."""
        persona = root[persona_root_name(persona_name)]
        question = conversation._slots["exchanges"][exchange]["question"]
        cycle_id = uuid.uuid4().hex[:12]
        now = time.time()
        turn = conversations.add_turn(conversation, exchange, persona_name, role, cycle_id)
        cycle = UvmObject(
            kind=KIND, cycle_id=cycle_id, target=persona, selector="answer", persona=persona_name, role=role,
            question=question, depth=depth, context=conversations.context_for(conversation, exchange),
            prior=[dict(p) for p in prior], conversation=conversation, turn=turn, plan=None, plan_attempts=0,
            facet_answers=[], reply=None, iteration=1, attempts=PersistentList(), args=[], kwargs={},
            transitions=[{"state": "IDLE", "at": now}], created=now, updated=now,
            **{STATE_SLOT: root["psm_prototypes_obj"]._slots["IDLE"]})
        mark_kernel(cycle)
        root["active_cycles"][cycle_id] = cycle
        return cycle_id

    # --- the steps ------------------------------------------------------------------------------

    def begin(self, cycle_id: str) -> None:
        """Recall what memory holds for the question (BABS from documents, ROBIN from past turns)."""
        question, persona, this_exchange, allowed = self.runner.read_cycle(cycle_id, lambda c: (
            c._slots["question"], c._slots["persona"], turn_source_prefix(c), self._memory_of_asker(c)))
        grounding = self._grounding(question, persona, this_exchange, allowed)

        def record(root, cycle):
            cycle._slots["grounding"] = grounding
            self.runner.move(root, cycle, "DECOMPOSING")
        self.runner.change(cycle_id, record)

    def _memory_of_asker(self, cycle: UvmObject) -> Callable[[str, str | None], bool]:
        """Which memory an answer in ``cycle``'s conversation may draw on: its owner's documents
        and the turns of its owner's conversations (everyone's, for an image without identities)."""
        owner = owner_key(cycle) or OWNER.key
        table = cycle._p_jar.root()[conversations.ROOT_KEY]
        theirs = {conversation_id for conversation_id, c in table.items() if (c._slots.get("owner") or OWNER.key) == owner}

        def allowed(source: str, document_owner: str | None) -> bool:
            conversation_id = conversations.conversation_of_source(source)
            if conversation_id is not None:
                return conversation_id in theirs
            return (document_owner or OWNER.key) == owner
        return allowed

    def _grounding(self, question: str, persona: str, this_exchange: str,
                   allowed: Callable[[str, str | None], bool]) -> list[dict[str, Any]]:
        if self.recall is None or persona not in GROUNDED:
            return []
        try:
            # the turns of this very exchange are not memory: shown an answer, a small model copies it
            hits = self.recall(question, GROUNDED[persona], excluding=this_exchange, allowed=allowed)
        except Exception:  # memory is help, not a condition: an answer without it still comes
            log.exception("recalling memory for %s failed", persona)
            return []
        return [{"source": h["source"], "chunk": h["chunk"], "text": h["text"][:MAX_GROUNDING_CHARS]}
                for h in hits[:GROUNDING_HITS]]

    def plan(self, cycle_id: str) -> None:
        job = self.runner.read_cycle(cycle_id, self._job)
        facets = list(job["persona"]["facets"])
        if job["depth"] == "direct" or job["role"] != "lead" or not facets:
            why = "no facets" if not facets else f"{job['role']} turn" if job["role"] != "lead" else "direct depth"
            return self._set_plan(cycle_id, {"direct": True, "why": why}, "SYNTHESIZING")
        feedback = next((a["verdict"] for a in reversed(job["attempts"]) if a["stage"] == "plan"), None)
        messages = plan_messages(job["persona"], job["question"],
                                 {f: v["intent"][:160] for f, v in job["persona"]["facets"].items()}, feedback)
        started = time.perf_counter()
        try:
            answer = self._generate(messages, job, self.policy.plan_tokens, retry=job["plan_attempts"], prose=False)
        except BackendError as exc:
            return self.runner.fail(cycle_id, f"the language model failed while planning: {exc}")
        try:
            steps, verdict = parse_plan(answer, facets), None
        except BadPlan as exc:
            steps, verdict = None, str(exc)
        attempts_left = job["plan_attempts"] + 1 < self.policy.max_plan_attempts

        def record(root, cycle):
            s = cycle._slots
            s["plan_attempts"] += 1
            s["attempts"].append({"stage": "plan", "iteration": s["plan_attempts"], "answer": bounded(answer),
                                  "verdict": verdict or "passed", "generation_seconds": round(time.perf_counter() - started, 3)})
            if steps is not None:
                s["plan"] = {"steps": steps}
                self.runner.move(root, cycle, "DELEGATING")
            elif not attempts_left:  # the persona answers without facets rather than not at all
                s["plan"] = {"direct": True, "why": f"no valid plan after {s['plan_attempts']} attempts: {verdict}"}
                self.runner.move(root, cycle, "SYNTHESIZING")
        self.runner.change(cycle_id, record)

    def delegate(self, cycle_id: str) -> None:
        job = self.runner.read_cycle(cycle_id, self._job)
        steps = job["plan"]["steps"]
        systems = {step["facet"]: self._compiled_facet(job, step["facet"]) for step in steps}
        ready = [step for step in steps if isinstance(systems[step["facet"]], str)]
        answers: list[dict[str, Any]] = [{**step, "text": None, "error": systems[step["facet"]].reason}
                                         for step in steps if not isinstance(systems[step["facet"]], str)]
        started = time.perf_counter()
        if ready:
            conversations_ = [facet_messages(systems[s["facet"]], s["question"], job["question"]) for s in ready]
            try:
                texts = self.runner.with_retries(lambda: self.runner.generate_many(
                    conversations_, **self._options(job, self.policy.facet_tokens)))
                answers += [{**s, "text": t.strip() or None, "error": None if t.strip() else "an empty answer"}
                            for s, t in zip(ready, texts)]
            except BackendError as exc:
                answers += [{**s, "text": None, "error": f"the language model failed: {exc}"} for s in ready]
        seconds = round(time.perf_counter() - started, 3)
        order = [s["facet"] for s in steps]
        answers.sort(key=lambda a: order.index(a["facet"]))

        def record(root, cycle):
            cycle._slots["facet_answers"] = answers
            cycle._slots["attempts"].append({"stage": "facets", "iteration": 1, "generation_seconds": seconds,
                                             "verdict": f"{sum(1 for a in answers if a['text'])} of {len(answers)} answered"})
            self.runner.move(root, cycle, "SYNTHESIZING")
        self.runner.change(cycle_id, record)

    def weave(self, cycle_id: str) -> None:
        def enter(root, cycle):
            if state_of(cycle) != "SYNTHESIZING":
                self.runner.move(root, cycle, "SYNTHESIZING")
            return self._job(cycle)
        job = self.runner.change(cycle_id, enter)
        notes = [] if self._plain_fallback(job) else [a for a in job["facet_answers"] if a["text"]]
        task = {"lead": None, "partner": PARTNER_TASKS.get(job["persona"]["name"]), "closer": CLOSING_TASK}[job["role"]]
        messages = reply_messages(job["persona"], job["question"], job["context"], job["prior"], notes, task,
                                  revision=job["iteration"] > 1, grounding=job["grounding"],
                                  looked_in_documents=GROUNDED.get(job["persona"]["name"]) == "documents",
                                  plain=self._plain_fallback(job))
        started = time.perf_counter()
        forward = None if self._sent_whole(job) else self.runner.streams.get(cycle_id)
        text = ReplyText(job["persona"]["name"], forward, self.policy.reply_tokens)
        try:
            answer = self._generate(messages, job, self.policy.reply_tokens, retry=job["iteration"] - 1, stream=text.feed)
        except BackendError as exc:
            return self.runner.fail(cycle_id, f"the language model failed while answering: {exc}")
        reply = text.finish(answer)

        def record(root, cycle):
            s = cycle._slots
            s["reply"] = reply
            s["attempts"].append({"stage": "reply", "iteration": s["iteration"], "prompt": bounded(messages[-1]["content"]),
                                  "answer": bounded(answer), "verdict": None,
                                  "generation_seconds": round(time.perf_counter() - started, 3)})
            self.runner.move(root, cycle, "VALIDATING")
        self.runner.change(cycle_id, record)

    def gate(self, cycle_id: str) -> None:
        job = self.runner.read_cycle(cycle_id, self._job)
        example = job["persona"].get("example") or {}
        instructions = [persona_system(job["persona"]), str(example.get("answer", "")), *PARTNER_TASKS.values(), CLOSING_TASK,
                        *(v["intent"] for v in job["persona"]["facets"].values())]
        verdict = self.quality_problem(job["reply"] or "", job["question"], job["prior"], instructions)
        if verdict is None and job["persona"]["name"] in self.policy.prose_only:
            verdict = not_prose(job["reply"] or "")
        fallback = self._plain_fallback(job)
        kept_despite, reply = None, job["reply"] or ""
        if fallback and verdict is not None and job["persona"]["name"] in self.policy.prose_only:
            reply = as_prose(reply)
        if fallback and verdict is not None and reply.strip():
            # the plain answer after the revisions is kept even if imperfect: a person asked
            verdict, kept_despite = None, verdict
        if verdict is None and self._from_general_knowledge(job) and not SAYS_GENERAL_KNOWLEDGE.search(reply):
            reply = f"{reply.rstrip()} {GENERAL_KNOWLEDGE}"  # the model, told to say so, mostly does not
        forward = self.runner.streams.get(cycle_id)
        streamed = "" if self._sent_whole(job) else job["reply"] or ""
        if verdict is None and forward and reply.startswith(streamed) and len(reply) > len(streamed):
            forward(reply[len(streamed):])  # what the gate added: the person sees what is kept

        def record(root, cycle):
            s = cycle._slots
            attempts = s["attempts"]
            attempts[-1] = {**attempts[-1], "verdict": verdict or (f"kept as the plain answer: {kept_despite}"
                                                                   if kept_despite else "passed")}
            if verdict is None:
                s["reply"] = reply
                conversations.complete_turn(s["conversation"], s["turn"], s["reply"],
                                            [a["facet"] for a in s["facet_answers"] if a["text"]],
                                            sources_of(s.get("grounding") or []))
                return self.runner.move(root, cycle, "COMPLETE")
            if s["iteration"] > self.policy.max_revisions + 1:
                return self.runner.move(root, cycle, "FAILED",
                                         f"the reply failed the quality gate after {s['iteration']} attempts: {verdict}")
            if s["iteration"] == self.policy.max_revisions + 1:  # last: a plain answer, without facets
                s["plan"] = {"direct": True, "why": f"a plain answer after the gate refused {s['iteration']} replies"}
            s["iteration"] += 1
            self.runner.move(root, cycle, "SYNTHESIZING")
        self.runner.change(cycle_id, record)

    # --- the quality gate -----------------------------------------------------------------------

    def quality_problem(self, reply: str, question: str, prior: list[dict[str, str]],
                        instructions: list[str]) -> str | None:
        """Why ``reply`` may not be the turn, or None when it may."""
        words = reply.split()
        if not words:
            return "the reply is empty"
        if len(words) < self.policy.min_reply_words:
            return f"the reply has {len(words)} word(s); say something that answers the question"
        if len(reply) > self.policy.max_reply_chars:
            return f"the reply is {len(reply)} characters long, over {self.policy.max_reply_chars}"
        if "<|" in reply or "|>" in reply:
            return "the reply holds chat-template markers"
        repeated_line = repeated_sentence(reply)
        if repeated_line:
            return f"the reply repeats itself ({repeated_line[:60]!r} more than once)"
        leaked = leaked_words(reply, instructions, self.policy.leak_words)
        if leaked:
            return f"the reply repeats its instructions ({leaked!r})"
        repeated = leaked_words(reply, [p["text"] for p in prior], self.policy.repeat_words)
        if repeated:
            return f"the reply repeats the turn before it ({repeated!r}); add something of your own"
        references = [question, *(p["text"] for p in prior)]
        vectors = self.embedder.encode([reply, *references])
        similarity = float(max(vectors[1:] @ vectors[0]))
        if similarity < self.policy.on_topic_similarity:
            return f"the reply is off topic (similarity {similarity:.2f} to the question)"
        return None

    # --- helpers --------------------------------------------------------------------------------

    def _job(self, cycle: UvmObject) -> dict[str, Any]:
        """What the steps need of a cycle, as plain data."""
        s = cycle._slots
        codex = persona_codex(s["target"])
        return {"cycle_id": s["cycle_id"], "persona": codex, "persona_oid": oid_text(s["target"]),
                "question": s["question"], "role": s["role"], "depth": s["depth"], "context": to_plain(s["context"]),
                "prior": to_plain(s["prior"]), "plan": to_plain(s["plan"]), "plan_attempts": s["plan_attempts"],
                "facet_answers": to_plain(s["facet_answers"]), "reply": s["reply"], "iteration": s["iteration"],
                "attempts": [dict(a) for a in s["attempts"]], "grounding": to_plain(s.get("grounding") or [])}

    def _sent_whole(self, job: dict) -> bool:
        """Whether the reply streams only once the gate has kept it: a prose-only persona's last
        try, which the gate may turn into sentences."""
        return self._plain_fallback(job) and job["persona"]["name"] in self.policy.prose_only

    def _from_general_knowledge(self, job: dict) -> bool:
        """Whether this reply is from a persona who looks in the person's documents and found nothing."""
        return GROUNDED.get(job["persona"]["name"]) == "documents" and not job["grounding"]

    def _plain_fallback(self, job: dict) -> bool:
        """Whether this reply is the last try: a plain answer after the revisions failed the gate."""
        return job["iteration"] > self.policy.max_revisions + 1

    def _options(self, job: dict, max_new_tokens: int, retry: int = 0, prose: bool = True) -> dict[str, Any]:
        """Generation options for a step; ``prose`` (a note or a reply, not the JSON plan) turns on
        the engine's repetition controls."""
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens}
        if prose:
            options["prose"] = True
        if retry:  # a second try is sampled, so it is not the greedy repeat of the first
            options.update(temperature=0.7, seed=1000 + retry)
        expert = job["persona"]["expert"]
        if expert and expert in self.runner.experts():
            options["expert"] = expert
        return options

    def _generate(self, messages, job: dict, max_new_tokens: int, retry: int = 0,
                  stream: Callable[[str], None] | None = None, prose: bool = True) -> str:
        options = self._options(job, max_new_tokens, retry, prose)
        if stream is not None:
            options["stream"] = stream
        return self.runner.generate_with_retries(messages, options)[0]

    def _compiled_facet(self, job: dict, selector: str) -> "str | FacetUnavailable":
        """The facet's system prompt, compiling it first (a method cycle) if its slot holds an intent."""
        facet = job["persona"]["facets"][selector]
        if facet["system"]:
            return facet["system"]
        facet_cycle = self.runner.start_or_join(job["persona_oid"], selector, [], {}, intent=facet["intent"])
        state = self.runner.run(facet_cycle)
        if state != "COMPLETE":
            reason = self.runner.read_cycle(facet_cycle, lambda c: c._slots.get("reason"))
            return FacetUnavailable(f"compiling {selector} ended {state}: {reason}")
        system = self.runner.read(lambda root: persona_codex(root[persona_root_name(job["persona"]["name"])])
                                  ["facets"].get(selector, {}).get("system"))
        return system or FacetUnavailable(f"{selector} was compiled but holds no system prompt")

    def _set_plan(self, cycle_id: str, plan: dict, state: str) -> None:
        def record(root, cycle):
            cycle._slots["plan"] = plan
            self.runner.move(root, cycle, state)
        self.runner.change(cycle_id, record)


class ReplyText:
    """A reply cleaned while it streams: a leading ``NAME:`` is dropped, and a last sentence the
    token limit cut off is left out. Text is passed on as it comes, except near the limit, where it
    waits for the end of each sentence. What ``forward`` got, joined, is exactly ``finish``'s text."""

    BOUNDARY = re.compile(r"(?<!\d)[.!?)\]`*\"'](?=\s)|(?=\n)")
    ENDS_WELL = re.compile(r"[.!?)\]`*\"']\s*$")
    CAREFUL_PIECES = 24  # this close to the token limit, a sentence may be cut off

    def __init__(self, name: str, forward: Callable[[str], None] | None, limit: int):
        self.prefix = re.compile(rf"^\s*\**{re.escape(name)}\**\s*:\s*", re.IGNORECASE)
        self.name_length = len(name)
        self.forward = forward
        self.careful_from = max(0, limit - self.CAREFUL_PIECES)
        self.pieces = 0
        self.raw = ""
        self.sent = 0

    def feed(self, piece: str) -> None:
        self.raw += piece
        self.pieces += 1
        start = self.raw.lstrip()
        if len(start) < self.name_length + (6 if start.startswith("*") else 2):  # is "NAME:" coming?
            return
        text = self._without_prefix(self.raw)
        if self.pieces < self.careful_from:
            cut = len(text) - len(text.split()[-1]) if text.split() else 0  # the last word may go on
            return self._send(text[:cut].rstrip(" ") if cut else "")
        ends = [m.end() for m in self.BOUNDARY.finditer(text)]
        self._send(text[:max(ends[-1] if ends else 0, self.sent)])

    def finish(self, answer: str) -> str:
        text = self._without_prefix(answer).rstrip()
        if self.pieces >= self.careful_from and not self.ENDS_WELL.search(text):
            ends = [m.end() for m in self.BOUNDARY.finditer(text) if m.end() >= self.sent]
            if ends:
                text = text[:ends[-1]].rstrip()
        sent = self._sent_text()
        if not text.startswith(sent):  # a piece was passed on before the prefix could be seen: keep it
            text = answer.strip() if answer.strip().startswith(sent) else sent
        self._send(text)
        return text

    def _without_prefix(self, text: str) -> str:
        return self.prefix.sub("", text, count=1).lstrip()

    def _sent_text(self) -> str:
        return self._without_prefix(self.raw)[:self.sent] if self.sent else ""

    def _send(self, text: str) -> None:
        if len(text) > self.sent:
            if self.forward is not None:
                self.forward(text[self.sent:])
            self.sent = len(text)


@dataclass(frozen=True)
class FacetUnavailable:
    reason: str


def not_prose(reply: str) -> str | None:
    """Why ``reply`` is not plain talk (code, or a list of two or more lines), or None."""
    if "```" in reply:
        return "the reply holds code; answer in plain sentences, without code"
    if len(LIST_MARKER.findall(reply)) >= 2:
        return "the reply is a list; answer in two to four plain sentences, without a list"
    return None


def repeated_sentence(reply: str) -> str | None:
    """A sentence (of four words or more) that ``reply`` says twice: a small model's loop."""
    seen = set()
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", reply):
        words = tuple(re.findall(r"[a-z']+", sentence.lower()))
        if len(words) >= 4 and words in seen:
            return sentence.strip()
        seen.add(words)
    return None


def leaked_words(reply: str, instructions: list[str], run: int) -> str | None:
    """The first ``run`` words in a row that ``reply`` shares with any of ``instructions``."""
    def words(text: str) -> list[str]:
        return re.findall(r"[a-z0-9']+", text.lower())
    windows = {tuple(ws[i:i + run]) for text in instructions for ws in [words(text)] for i in range(len(ws) - run + 1)}
    said = words(reply)
    for i in range(len(said) - run + 1):
        if tuple(said[i:i + run]) in windows:
            return " ".join(said[i:i + run])
    return None
