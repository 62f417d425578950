"""The mind service: asking the personas, routing, and the conversations (see IMindService).

``ask`` is the dialogue: the router picks the lead and a partner; each turn is one Synaptic Cycle
run by the cycle thread (so a turn survives a crash like any cycle); the partner builds on the
lead; ALFRED closes when the turns repeat each other or drift from the question. At most
``max_turns`` turns. Text reaches the asker as ``{"text", "persona"}`` events while it is made.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from zope.interface import implementer

from batos.errors import BadRequest, BatosError, TooLarge
from batos.llm.embeddings import Embedder
from batos.mind import conversations
from batos.mind.codex import PERSONA_NAMES, persona_root_name
from batos.mind.cycle_service import CycleService
from batos.mind.exemplars import add_exemplar
from batos.mind.interfaces import IMindService
from batos.mind.router import Router, check_exemplar
from batos.mind.synaptic import SynapticCycle, persona_codex, sources_of
from batos.principals import Principal
from batos.tasks import spawn

log = logging.getLogger(__name__)

Emit = Callable[[dict], Awaitable[None]]
DEPTHS = ("auto", "direct", "facets")
MAX_EXEMPLARS = 10_000


@dataclass
class MindPolicy:
    max_turns: int = 3
    max_question_chars: int = 4000
    repeat_similarity: float = 0.9  # two turns this alike repeat each other
    drift_similarity: float = 0.15  # a turn this far from the question has drifted


class AskFailed(BatosError):
    code = "synthesis_failed"


@implementer(IMindService)
class MindService:
    """See the module docstring and IMindService."""

    def __init__(self, cycles: CycleService, synaptic: SynapticCycle, router: Router, embedder: Embedder,
                 policy: MindPolicy | None = None, check_model: Callable[[], None] = lambda: None,
                 known_experts: Callable[[], set[str]] = set,
                 remember: Callable[[str, str], None] | None = None):
        self.remember = remember  # indexes a finished turn (source, text) so personas can recall it
        self.check_model = check_model  # raises when no model will ever answer (e.g. BATOS_LLM=none)
        self.known_experts = known_experts  # the experts the model can apply now (never waits)
        self.cycles = cycles
        self.runner = cycles.runner
        self.synaptic = synaptic
        self.router = router
        self.embedder = embedder
        self.policy = policy or MindPolicy()
        self._tasks: set[asyncio.Task] = set()
        self._live: set[tuple[str, int]] = set()  # (conversation, exchange) of the dialogues running now

    # --- ask ------------------------------------------------------------------------------------

    async def op_ask(self, fields: dict, context: Any) -> dict[str, Any]:
        started = time.perf_counter()
        question = self.check_question(fields["question"])
        lead = check_persona(fields.get("persona"))
        depth = fields.get("depth", "auto")
        if depth not in DEPTHS:
            raise BadRequest(f"depth must be one of {', '.join(DEPTHS)}, not {depth!r}")
        max_turns = fields.get("turns", self.policy.max_turns)
        if type(max_turns) is not int or not 1 <= max_turns <= self.policy.max_turns:
            raise BadRequest(f"turns must be a whole number from 1 to {self.policy.max_turns} (BATOS_MAX_TURNS), "
                             f"not {max_turns!r}")
        principal = context.request.principal
        if fields.get("conversation") is not None:
            await asyncio.to_thread(self.runner.read, lambda root: conversations.find(root, fields["conversation"], principal))
        self.check_model()
        route = await asyncio.to_thread(self.router.route, question, lead)
        if depth != "auto":
            route["depth"] = depth
        await context.emit({"route": route})
        conversation_id, exchange = await asyncio.to_thread(self.runner.transact, lambda root: self._open_exchange(
            root, fields.get("conversation"), question, route, principal))
        turns: list[dict[str, Any]] = []
        state = "answered"
        self._live.add((conversation_id, exchange))
        try:
            speakers = [(route["lead"], "lead", route["depth"]), *((p, "partner", "direct") for p in route["partners"])]
            for persona, role, turn_depth in speakers[:max_turns]:
                turns.append(await self._turn(conversation_id, exchange, persona, role, turn_depth, turns, context.emit))
                if turns[-1]["state"] != "COMPLETE":
                    break
            if (len(turns) < max_turns and turns[-1]["state"] == "COMPLETE"
                    and all(t["persona"] != "ALFRED" for t in turns) and await self._needs_steward(question, turns)):
                turns.append(await self._turn(conversation_id, exchange, "ALFRED", "closer", "direct", turns, context.emit))
        except BaseException:
            state = "failed"
            raise
        finally:
            if turns and turns[0]["state"] != "COMPLETE":
                state = "failed"
            await asyncio.to_thread(self.runner.transact, lambda root: conversations.end_exchange(
                conversations.find(root, conversation_id), exchange, state))
            self._live.discard((conversation_id, exchange))
        if state == "failed":
            raise AskFailed(f"{turns[0]['persona']} could not answer (cycle {turns[0]['cycle']}): {turns[0]['reason']}")
        return {"conversation": conversation_id, "exchange": exchange,
                "route": {k: route[k] for k in ("archetype", "lead", "partners", "depth", "decided_by")},
                "turns": [{k: t[k] for k in ("persona", "role", "text", "facets", "sources", "cycle", "state", "reason")}
                          for t in turns],
                "seconds": round(time.perf_counter() - started, 3)}

    def check_question(self, question: str) -> str:
        question = question.strip()
        if not question:
            raise BadRequest("the question is empty")
        if len(question) > self.policy.max_question_chars:
            raise TooLarge(f"the question is {len(question)} characters long; at most "
                           f"{self.policy.max_question_chars} are accepted (BATOS_MAX_QUESTION_CHARS)")
        return question

    def _open_exchange(self, root, conversation_id: str | None, question: str, route: dict,
                       principal: Principal) -> tuple[str, int]:
        conversation = (conversations.find(root, conversation_id, principal) if conversation_id
                        else conversations.start(root, question, principal))
        return conversation._slots["conversation_id"], conversations.add_exchange(conversation, question, route)

    async def _turn(self, conversation_id: str, exchange: int, persona: str, role: str, depth: str,
                    prior: list[dict], emit: Emit) -> dict[str, Any]:
        """One persona's turn: its answer cycle, run and awaited, its text streamed as it comes."""
        earlier = [{"persona": t["persona"], "text": t["text"]} for t in prior if t["text"]]
        cycle_id = await asyncio.to_thread(self.runner.transact, lambda root: self.synaptic.start(
            root, conversations.find(root, conversation_id), exchange, persona, role, depth, earlier))
        await emit({"turn": {"persona": persona, "role": role, "cycle": cycle_id}})
        loop = asyncio.get_running_loop()

        def stream(piece: str) -> None:
            loop.call_soon_threadsafe(lambda: spawn(self._tasks, emit({"text": piece, "persona": persona, "cycle": cycle_id}),
                                                    "sending a text piece"))
        self.runner.streams[cycle_id] = stream
        try:
            found = await self.cycles.run_and_wait(cycle_id, emit)
        finally:
            self.runner.streams.pop(cycle_id, None)
        complete = found["state"] == "COMPLETE"
        if complete and self.remember is not None:
            await self._remember_turn(conversation_id, exchange, persona, found.get("question") or "", found.get("reply") or "")
        return {"persona": persona, "role": role, "cycle": cycle_id, "state": found["state"],
                "text": found.get("reply") if complete else None, "reason": found.get("reason"),
                "facets": [a["facet"] for a in found.get("facet_answers") or [] if a.get("text")],
                "sources": sources_of(found.get("grounding") or []) if complete else []}

    async def _remember_turn(self, conversation_id: str, exchange: int, persona: str, question: str, text: str) -> None:
        source = conversations.turn_source(conversation_id, exchange, persona)
        try:
            await asyncio.to_thread(self.remember, source, f"{question}\n\n{persona}: {text}")
        except Exception:  # recall is a help; the turn itself is already committed
            log.exception("indexing the turn %s failed", source)

    async def _needs_steward(self, question: str, turns: list[dict]) -> bool:
        """Whether the last turn repeats the one before it or drifted from the question."""
        if len(turns) < 2:
            return False
        vectors = await asyncio.to_thread(self.embedder.encode, [question, turns[-2]["text"], turns[-1]["text"]])
        repeats = float(vectors[1] @ vectors[2]) >= self.policy.repeat_similarity
        drifts = float(vectors[0] @ vectors[2]) < self.policy.drift_similarity
        return repeats or drifts

    # --- routing --------------------------------------------------------------------------------

    async def op_route(self, fields: dict, context: Any) -> dict[str, Any]:
        route = await asyncio.to_thread(self.router.route, self.check_question(fields["question"]))
        if not context.request.principal.is_admin:  # a taught text may be another person's question
            route["exemplar"] = None
        return route

    async def op_route_teach(self, fields: dict, context: Any) -> dict[str, Any]:
        exemplar = check_exemplar(fields["text"], fields["archetype"])

        def teach(root) -> int:
            count = add_exemplar(root, exemplar.text, exemplar.archetype, MAX_EXEMPLARS)
            if count is None:
                raise TooLarge(f"the router already holds {MAX_EXEMPLARS} exemplars")
            return count
        count = await asyncio.to_thread(self.runner.transact, teach)
        await asyncio.to_thread(self.router.learn, exemplar.text)  # embedded now, not by the next route
        return {"exemplars": count, "archetype": exemplar.archetype}

    # --- personas and conversations ---------------------------------------------------------------

    async def op_personas(self, fields: dict, context: Any) -> list[dict[str, Any]]:
        experts = self.known_experts()

        def listing(root) -> list[dict[str, Any]]:
            found = []
            for name in PERSONA_NAMES:
                codex = persona_codex(root[persona_root_name(name)])
                codex["bound_to"] = "expert" if codex["expert"] in experts else "system prompt"
                codex["facets"] = [{"selector": selector, "intent": f["intent"], "compiled": f["system"] is not None,
                                    "version": f["version"]} for selector, f in codex["facets"].items()]
                found.append(codex)
            return found
        return await asyncio.to_thread(self.runner.read, listing)

    async def op_conversations_list(self, fields: dict, context: Any) -> list[dict[str, Any]]:
        def listing(root) -> list[dict[str, Any]]:
            cycles = root["active_cycles"]
            principal = context.request.principal
            found = [conversations.summary(c, cycles, self._live) for c in root[conversations.ROOT_KEY].values()
                     if conversations.visible(c, principal)]
            return sorted(found, key=lambda c: c["created"])
        return await asyncio.to_thread(self.runner.read, listing)

    async def op_conversation_show(self, fields: dict, context: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.runner.read, lambda root: conversations.summary(
            conversations.find(root, fields["conversation"], context.request.principal), root["active_cycles"],
            self._live, detail=True))

    async def op_conversations_prune(self, fields: dict, context: Any) -> dict[str, Any]:
        days = fields.get("days", 0)
        if days < 0:
            raise BadRequest("days must not be negative")
        return {"pruned": await asyncio.to_thread(self.runner.transact,
                                                  lambda root: conversations.prune(root, days * 86400))}


def check_persona(name: str | None) -> str | None:
    if name is None:
        return None
    if name.upper() not in PERSONA_NAMES:
        raise BadRequest(f"unknown persona {name!r}; the personas are {', '.join(PERSONA_NAMES)}")
    return name.upper()

