"""Kernel objects: what only the kernel may change.

An object is marked by the kernel (at genesis, by migration, when a cycle is made) with the slots
it protects, or with ``ALL``. Cycles and the cycle's states protect everything; ``traits_obj`` and
``pLLM_obj`` protect their kernel slots (primitives, model and expert tables, the active model,
``parent*``). A slot holding a primitive is protected wherever it is. Clients (``set``,
``define``, rollback) and methods (their write sets) go through :func:`check_writable`; the
kernel's own code writes ``_slots`` directly and is not checked.
"""

from __future__ import annotations

from typing import Any

from batos.errors import BatosError, Protected
from batos.image.objects import PARENT_SLOT, Method, UvmObject, describe_short

ALL = "*"
KERNEL_MARK = "_kernel_slots"
PLLM_KERNEL_SLOTS = ("model_bundles", "lora_repository", "active_model", "infer_", PARENT_SLOT)


def mark_kernel(obj: UvmObject, slots: str | tuple[str, ...] = ALL) -> None:
    """Make ``obj`` a kernel object protecting ``slots`` (or every slot)."""
    setattr(obj, KERNEL_MARK, slots if slots == ALL else tuple(slots))


def protected_slots(obj: UvmObject) -> str | tuple[str, ...]:
    return getattr(obj, KERNEL_MARK, None) or ()


def is_kernel_object(obj: UvmObject) -> bool:
    return protected_slots(obj) == ALL


def check_writable(obj: UvmObject, slot: str) -> None:
    """Raise Protected unless a client or a method may write (or delete) ``slot`` of ``obj``."""
    marked = protected_slots(obj)
    if marked == ALL:
        raise Protected(f"{describe_short(obj)} is a kernel object; only the kernel changes it")
    if slot in marked:
        raise Protected(f"slot {slot!r} of {describe_short(obj)} belongs to the kernel")
    current = obj._slots.get(slot)
    if isinstance(current, Method) and current.origin == "primitive":
        raise Protected(f"slot {slot!r} of {describe_short(obj)} holds a primitive; only the kernel changes it")


class BadParents(BatosError):
    code = "bad_request"


def check_parents(value: Any) -> None:
    """``parent*`` holds a list of objects and nothing else."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, UvmObject) for p in value):
        raise BadParents(f"{PARENT_SLOT} must be a list of objects (references such as {{\"$oid\": \"0x..\"}})")
