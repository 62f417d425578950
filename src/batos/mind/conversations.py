"""Conversations: questions, routes and the personas' turns, kept in the image.

``root["conversations"]`` maps an id to a conversation, a kernel object (only the kernel changes
it) with these slots:

    conversation_id   12 hex digits
    title             the first question, cut short
    created, updated  seconds since the epoch
    exchanges         [{"question", "route", "at", "state"}]; state is open, answered or failed;
                      an open exchange no dialogue is serving any more (its UVM stopped) is shown
                      as interrupted
    turns             [{"exchange", "persona", "role", "cycle", "text", "facets", "sources"}]; ``text`` is set
                      in the transaction that completes the turn's cycle

A turn without text takes its state from its cycle (running, failed, or lost once the cycle is
pruned), so a crash never leaves a turn and its cycle disagreeing.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from BTrees.OOBTree import OOBTree
from persistent.list import PersistentList

from batos.errors import NotFound
from batos.image.genesis import Furnishing
from batos.image.objects import UvmObject, oid_text
from batos.image.protection import mark_kernel
from batos.mind.cycle import state_of
from batos.principals import OWNER, Principal

ROOT_KEY = "conversations"
TITLE_CHARS = 80
CONTEXT_TURNS = 6  # earlier turns a follow-up question sees
CONTEXT_CHARS = 500  # of each


def install_conversations(root) -> None:
    if ROOT_KEY not in root:
        root[ROOT_KEY] = OOBTree()


CONVERSATIONS = Furnishing("conversations", 1, install_conversations)


TURN_SOURCE_PREFIX = "conversation:"  # memory's source of a finished turn: conversation:ID/EXCHANGE/PERSONA


def turn_source(conversation_id: str, exchange: int, persona: str = "") -> str:
    """The memory source a turn is indexed under (``persona`` empty: the exchange's prefix)."""
    return f"{TURN_SOURCE_PREFIX}{conversation_id}/{exchange}/{persona}"


def conversation_of_source(source: str) -> str | None:
    """The conversation id of a turn's memory source; None for any other source."""
    return source[len(TURN_SOURCE_PREFIX):].split("/", 1)[0] if source.startswith(TURN_SOURCE_PREFIX) else None


def find(root, conversation_id: str, principal: Principal | None = None) -> UvmObject:
    """The conversation; NotFound when there is none, or when ``principal`` (if given) may not see
    it: a conversation belongs to whoever started it, and to admins."""
    conversation = root[ROOT_KEY].get(conversation_id)
    if conversation is None or (principal is not None and not visible(conversation, principal)):
        raise NotFound(f"no conversation {conversation_id}; see `batos conversations list`")
    return conversation


def visible(conversation: UvmObject, principal: Principal) -> bool:
    return principal.may_see(conversation._slots.get("owner"))


def start(root, question: str, owner: Principal = OWNER) -> UvmObject:
    now = time.time()
    conversation_id = uuid.uuid4().hex[:12]
    conversation = UvmObject(conversation_id=conversation_id, title=question[:TITLE_CHARS], created=now,
                             updated=now, exchanges=PersistentList(), turns=PersistentList(), owner=owner.key)
    mark_kernel(conversation)
    root[ROOT_KEY][conversation_id] = conversation
    return conversation


def add_exchange(conversation: UvmObject, question: str, route: dict) -> int:
    exchanges = conversation._slots["exchanges"]
    exchanges.append({"question": question, "route": dict(route), "at": time.time(), "state": "open"})
    _touch(conversation)
    return len(exchanges) - 1


def end_exchange(conversation: UvmObject, exchange: int, state: str) -> None:
    exchanges = conversation._slots["exchanges"]
    exchanges[exchange] = {**exchanges[exchange], "state": state}
    _touch(conversation)


def add_turn(conversation: UvmObject, exchange: int, persona: str, role: str, cycle_id: str) -> int:
    turns = conversation._slots["turns"]
    turns.append({"exchange": exchange, "persona": persona, "role": role, "cycle": cycle_id, "text": None,
                  "facets": []})
    _touch(conversation)
    return len(turns) - 1


def complete_turn(conversation: UvmObject, turn: int, text: str, facets: list[str],
                  sources: list[str] = ()) -> None:
    turns = conversation._slots["turns"]
    turns[turn] = {**turns[turn], "text": text, "facets": list(facets), "sources": list(sources)}
    _touch(conversation)


def context_for(conversation: UvmObject, before_exchange: int) -> list[dict[str, str]]:
    """The earlier exchanges a follow-up sees, as chat messages: each question, then its
    completed turns, at most CONTEXT_TURNS turns (the latest), each cut to CONTEXT_CHARS."""
    turns = [t for t in conversation._slots["turns"] if t["exchange"] < before_exchange and t["text"]][-CONTEXT_TURNS:]
    messages, asked = [], None
    for turn in turns:
        if turn["exchange"] != asked:
            asked = turn["exchange"]
            question = conversation._slots["exchanges"][asked]["question"]
            messages.append({"role": "user", "content": question[:CONTEXT_CHARS]})
        messages.append({"role": "assistant", "content": f"{turn['persona']}: {turn['text'][:CONTEXT_CHARS]}"})
    return messages


def turn_view(turn: dict, cycles) -> dict[str, Any]:
    """A turn as plain data, its state read from its cycle while it has no text."""
    view = dict(turn)
    if turn["text"] is not None:
        view["state"] = "complete"
        return view
    cycle = cycles.get(turn["cycle"])
    if cycle is None:
        view["state"] = "lost"
    else:
        state = state_of(cycle)
        view["state"] = "failed" if state == "FAILED" else "running"
        if state == "FAILED":
            view["reason"] = cycle._slots.get("reason")
    return view


def summary(conversation: UvmObject, cycles, live: set[tuple[str, int]], detail: bool = False) -> dict[str, Any]:
    """A conversation as plain data; ``live`` holds the (conversation, exchange) pairs whose
    dialogue is running now."""
    s = conversation._slots
    data = {"id": s["conversation_id"], "oid": oid_text(conversation), "title": s["title"], "created": s["created"], "updated": s["updated"],
            "exchanges": len(s["exchanges"]), "turns": len(s["turns"])}
    if detail:
        data["exchanges"] = [dict(e, state=exchange_state(e, (s["conversation_id"], i), live),
                                  turns=[turn_view(t, cycles) for t in s["turns"] if t["exchange"] == i])
                             for i, e in enumerate(s["exchanges"])]
    return data


def exchange_state(exchange: dict, key: tuple[str, int], live: set[tuple[str, int]]) -> str:
    return "interrupted" if exchange["state"] == "open" and key not in live else exchange["state"]


def prune(root, older_than_seconds: float) -> list[str]:
    """Forget conversations last changed longer ago than ``older_than_seconds``; their ids."""
    limit = time.time() - older_than_seconds
    conversations = root[ROOT_KEY]
    doomed = [cid for cid, c in conversations.items() if c._slots["updated"] <= limit]
    for conversation_id in doomed:
        del conversations[conversation_id]
    return doomed


def _touch(conversation: UvmObject) -> None:
    conversation._slots["updated"] = time.time()
