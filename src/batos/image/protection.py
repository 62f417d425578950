"""Kernel objects: what only the kernel may change.

An object is marked by the kernel (at genesis, by migration, when a cycle is made) with the slots
it protects, or with ``ALL``. Cycles and the cycle's states protect everything; ``traits_obj`` and
``pLLM_obj`` protect their kernel slots (primitives, model and expert tables, the active model,
``parent*``), and so do the records in ``pLLM_obj``'s expert table. A slot holding a primitive is
protected wherever it is, and data may not take a primitive's name on any object. Clients (``set``,
``define``, rollback) and methods (their write sets) go through :func:`check_writable`; the
kernel's own code writes ``_slots`` directly and is not checked.
"""

from __future__ import annotations

import time
from typing import Any

from BTrees.IOBTree import IOBTree

from batos.errors import BatosError, Protected
from batos.image.objects import PARENT_SLOT, Method, UvmObject, describe_short, oid_text
from batos.image.primitives import TRAIT_PRIMITIVES
from batos.principals import Principal

ALL = "*"
PRIMITIVE_SELECTORS = frozenset(TRAIT_PRIMITIVES)
KERNEL_MARK = "_kernel_slots"
OUTSIDE_WRITES_KEY = "batos_outside_writes"  # root: {number: record} of the writes below
MAX_OUTSIDE_WRITES = 1000
PLLM_KERNEL_SLOTS = ("model_bundles", "lora_repository", "active_model", "active_model_chosen", "infer_", PARENT_SLOT)


def mark_kernel(obj: UvmObject, slots: str | tuple[str, ...] = ALL) -> None:
    """Make ``obj`` a kernel object protecting ``slots`` (or every slot)."""
    setattr(obj, KERNEL_MARK, slots if slots == ALL else tuple(slots))


def protected_slots(obj: UvmObject) -> str | tuple[str, ...]:
    return getattr(obj, KERNEL_MARK, None) or ()


def is_kernel_object(obj: UvmObject) -> bool:
    return protected_slots(obj) == ALL


_ANY_VALUE = object()


def check_writable(obj: UvmObject, slot: str, value: Any = _ANY_VALUE) -> None:
    """Raise Protected unless a client or a method may write (or delete) ``slot`` of ``obj`` (with
    ``value``, when given: data may not take a primitive's name, on any object)."""
    if value is not _ANY_VALUE and not isinstance(value, Method) and slot in PRIMITIVE_SELECTORS:
        raise Protected(f"{slot!r} is the name of a kernel primitive; data may not shadow it")
    marked = protected_slots(obj)
    if marked == ALL:
        raise Protected(f"{describe_short(obj)} is a kernel object; only the kernel changes it")
    if slot in marked:
        raise Protected(f"slot {slot!r} of {describe_short(obj)} belongs to the kernel")
    current = obj._slots.get(slot)
    if isinstance(current, Method) and current.origin == "primitive":
        raise Protected(f"slot {slot!r} of {describe_short(obj)} holds a primitive; only the kernel changes it")


def owner_key(obj: UvmObject) -> str | None:
    """The key of the principal a kernel object belongs to: its ``owner`` (a conversation), or
    its conversation's (a cycle that answers in one); None for what belongs to no one."""
    if not is_kernel_object(obj):
        return None
    if "owner" in obj._slots:
        return obj._slots["owner"]
    conversation = obj._slots.get("conversation")
    if isinstance(conversation, UvmObject) and is_kernel_object(conversation):
        return conversation._slots.get("owner")
    return None


def visible_to(obj: UvmObject, principal: Principal) -> bool:
    """Whether ``principal`` may see ``obj`` at all: what belongs to no one, everyone may."""
    owner = owner_key(obj)
    return owner is None or principal.may_see(owner)


class BadParents(BatosError):
    code = "bad_request"


def check_parents(value: Any) -> None:
    """``parent*`` holds a list of objects and nothing else."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, UvmObject) for p in value):
        raise BadParents(f"{PARENT_SLOT} must be a list of objects (references such as {{\"$oid\": \"0x..\"}})")


def record_outside_writes(root: Any, selector: str, receiver: UvmObject, writes: list[tuple[UvmObject, str]],
                          principal: Principal, more: int = 0) -> None:
    """Keep, for the doctor, that the method ``selector`` sent to ``receiver`` wrote slots of
    objects it was neither sent nor given as arguments nor made itself (and ``more`` such slots
    not listed). The last MAX_OUTSIDE_WRITES are kept, numbered from the first ever recorded, in
    the caller's transaction."""
    ledger = root.get(OUTSIDE_WRITES_KEY)
    if not isinstance(ledger, IOBTree):
        ledger = root[OUTSIDE_WRITES_KEY] = IOBTree()
    number = ledger.maxKey() + 1 if ledger else 0  # a BTree's len() walks every bucket
    common = {"time": time.time(), "method": selector, "receiver": oid_text(receiver), "by": principal.name}
    for target, slot in writes:
        ledger[number] = {**common, "target": oid_text(target), "slot": slot}
        number += 1
    if more:
        ledger[number] = {**common, "more": more}
        number += 1
    while number - ledger.minKey() > MAX_OUTSIDE_WRITES:
        del ledger[ledger.minKey()]


def outside_writes(root: Any) -> tuple[int, list[dict]]:
    """How many records :func:`record_outside_writes` ever made, and those kept, oldest first."""
    ledger = root.get(OUTSIDE_WRITES_KEY)
    if not isinstance(ledger, IOBTree) or not ledger:
        return 0, []
    return ledger.maxKey() + 1, list(ledger.values())
