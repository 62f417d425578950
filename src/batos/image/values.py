"""Image values as plain data (scalars, lists, string-keyed dicts) and back.

A reference to a persistent object is written ``{"$oid": "0x.."}`` (with the object's name when it
has one); a Method is written ``{"$method": selector, ...}``; anything else that plain data cannot
hold is written ``{"$repr": repr(value)}``. Plain data never holds a live object.
"""

from __future__ import annotations

from typing import Any, Callable

import persistent

from batos.image.objects import Method, UvmObject, oid_text

SCALARS = (type(None), bool, int, float, str, bytes)
MAX_DEPTH = 32
MAX_NODES = 200_000


class ValueTooLarge(ValueError):
    """A value with more parts than plain data may have (a structure sharing its halves, say)."""

    code = "too_large"


def reference(obj: persistent.Persistent) -> dict:
    ref = {"$oid": oid_text(obj)}
    if isinstance(obj, UvmObject):
        name = obj._slots.get("name")
        if isinstance(name, str):
            ref["name"] = name
    return ref


def method_summary(method: Method) -> dict:
    return {"$method": method.selector, "origin": method.origin, "version": method.version}


def to_plain(value: Any, max_nodes: int = MAX_NODES) -> Any:
    """``value`` as plain data, following the rules in this module's docstring; ValueTooLarge
    past ``max_nodes`` parts (so a stored structure that shares its halves cannot pin a thread)."""
    return _plain(value, 0, [max_nodes])


def _plain(value: Any, _depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueTooLarge("the value has too many parts to be shown as plain data")
    if isinstance(value, SCALARS):
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
            return {"$repr": repr(value)}
        return value
    if _depth >= MAX_DEPTH:
        return {"$repr": "..."}
    if isinstance(value, Method):
        return method_summary(value)
    if isinstance(value, UvmObject) or (
        isinstance(value, persistent.Persistent) and value._p_oid is not None
        and not hasattr(value, "items") and not hasattr(value, "append")
    ):
        return reference(value)
    if hasattr(value, "items"):
        return {str(k): _plain(v, _depth + 1, budget) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)) or hasattr(value, "append"):
        return [_plain(v, _depth + 1, budget) for v in value]
    return {"$repr": repr(value)}


def from_plain(value: Any, resolve: Callable[[str], Any]) -> Any:
    """Inverse of :func:`to_plain` for references: ``{"$oid": ...}`` becomes ``resolve(oid)``."""
    if isinstance(value, dict):
        if set(value) <= {"$oid", "name"} and isinstance(value.get("$oid"), str):
            return resolve(value["$oid"])
        return {k: from_plain(v, resolve) for k, v in value.items()}
    if isinstance(value, list):
        return [from_plain(v, resolve) for v in value]
    return value
