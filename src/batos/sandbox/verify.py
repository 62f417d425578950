"""Verifying a candidate method against examples before it is installed.

Each example runs in a sandbox worker, exactly as a stored method would, on a stand-in receiver
that holds a copy of the target's slots (plus the example's own) and inherits stand-in trait
primitives; nothing the candidate does reaches the image. Verification is a quality check, not a
boundary: a candidate can tell the stand-in from the real receiver. The boundary is the worker.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from batos.errors import BatosError
from batos.image.genesis import TRAIT_PRIMITIVES
from batos.image.objects import Method, UvmObject
from batos.image.values import to_plain
from batos.sandbox.host import MethodTimeout, run_method
from batos.sandbox.pool import SandboxPool
from batos.sandbox.restricted import check_compiles

SECONDS_PER_EXAMPLE = 10.0

_default_pool: SandboxPool | None = None
_default_lock = threading.Lock()


@dataclass
class Verdict:
    ok: bool
    message: str
    results: list[dict[str, Any]] = field(default_factory=list)


def default_pool() -> SandboxPool:
    """A small pool of this process's own, for verification outside a UVM (tests, benchmarks)."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = SandboxPool(2)
        return _default_pool


def stand_in(slots: dict[str, Any], oid: str | None) -> UvmObject:
    traits = UvmObject(**{selector: Method(selector, origin="primitive", primitive=name)
                          for selector, name in TRAIT_PRIMITIVES.items()})
    receiver = UvmObject(parents=[traits], **slots)
    if oid:
        receiver._p_oid = int(oid, 16).to_bytes(8, "big")
    return receiver


def call_text(selector: str, args: list, kwargs: dict, slots: dict | None, limit: int = 300) -> str:
    """The example as a call a reader (or a model) recognises: ``add(5, by=2)`` on an object whose
    slots were ... (shortened to ``limit`` characters)."""
    inside = ", ".join([*(repr(a) for a in args), *(f"{k}={v!r}" for k, v in kwargs.items())])
    shown = repr({k: v for k, v in (slots or {}).items() if k not in ("name", "description")})
    shown = shown if len(shown) <= limit else shown[:limit] + "...}"
    where = f" on an object whose slots were {shown}" if slots else ""
    return f"{selector}({inside}){where}"


def verify(source: str, selector: str, slots: dict[str, Any], examples: list[dict[str, Any]],
           seconds: float = SECONDS_PER_EXAMPLE, oid: str | None = None, pool: SandboxPool | None = None,
           shown_slots: set[str] | None = None) -> Verdict:
    """Run ``examples`` against the candidate; the verdict says what failed first.

    An example is ``{"slots": {...}, "args": [...], "kwargs": {...}, "result": ..., "after": {...}}``;
    every key is optional. Without ``result`` only "runs without raising" is checked. A verdict
    shows the slots named in ``shown_slots`` (those the candidate reads) and the example's own,
    rather than every slot of a busy object.
    """
    try:
        check_compiles(source, f"<candidate {selector}>")
    except SyntaxError as exc:
        return Verdict(False, f"RestrictedPython refused the candidate: {exc}")
    pool = pool or default_pool()
    results: list[dict[str, Any]] = []
    for number, example in enumerate(examples or [{}], start=1):
        before = {**slots, **(example.get("slots") or {})}
        receiver = stand_in(before, oid)
        args, kwargs = list(example.get("args") or []), dict(example.get("kwargs") or {})
        shown = before if shown_slots is None else {
            k: v for k, v in before.items() if k in shown_slots or k in (example.get("slots") or {})}
        call = call_text(selector, args, kwargs, shown)
        try:
            result = run_method(pool, selector, source, receiver, args, kwargs, seconds)
        except MethodTimeout:
            return Verdict(False, f"example {number}: {call} ran past {seconds:g} s of wall-clock time (an endless loop?)", results)
        except BatosError as exc:
            return Verdict(False, f"example {number}: {call} raised {exc}", results)
        got = to_plain(result)
        results.append({"example": number, "result": got})
        if "result" in example and got != example["result"]:
            return Verdict(False, f"example {number}: {call} returned {got!r}, expected {example['result']!r}", results)
        for slot, expected in (example.get("after") or {}).items():
            actual = to_plain(receiver._slots.get(slot))
            if actual != expected:
                return Verdict(False, f"example {number}: after {call}, slot {slot!r} is {actual!r}, expected {expected!r}", results)
    return Verdict(True, f"{len(results)} example(s) passed", results)
