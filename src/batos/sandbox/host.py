"""The UVM's side of one method call: what the worker may see, and what it may change.

:func:`run_method` sends the call to a worker and serves its requests until it answers, inside
the caller's transaction. Objects reach the worker only as handles into this call's table, issued
as values are sent; a handle the worker did not get is a protocol violation, and the worker is
killed; so is one that sends a frame without this call's nonce. Writes come back as a write set, each one checked (slot name, kernel protection,
``parent*`` shape, size and depth limits) and applied here. The first refusal decides the outcome
of the whole call, whatever the method does after it, so a refused call writes nothing once its
transaction is aborted.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from persistent.list import PersistentList
from persistent.mapping import PersistentMapping

from batos.errors import BatosError, Protected, TooLarge
from batos.image import primitives
from batos.image.objects import PARENT_SLOT, Method, UvmObject, lookup
from batos.image.protection import check_parents, check_writable
from batos.sandbox import channel as wire
from batos.sandbox.channel import ChannelError, ChannelTimeout, FrameTooLarge, Ref
from batos.sandbox.pool import SandboxLimits, SandboxPool
from batos.sandbox.restricted import method_code

# The trait primitives a method may call; services (the model) and dispatch's last resort may not.
PRIMITIVES_FOR_METHODS = frozenset({"clone", "describe", "oid", "slot_names"})
MAX_SNAPSHOT_BYTES = 256 * 1024
MAX_NEW_OBJECTS = 1000  # objects one message may create
MAX_OUTSIDE_WRITES_KEPT = 100  # per call, of the writes outside its receiver and arguments
OBJECT_BYTES = 256  # what a new object costs the image before its slots


class MethodError(BatosError):
    """The method raised; the message names the exception and the line."""

    code = "method_error"


class MethodTimeout(BatosError):
    code = "timeout"

    def __init__(self, seconds: float):
        super().__init__(f"the method ran past its time budget of {seconds:g} s; nothing was written")


class SandboxUnavailable(BatosError):
    code = "busy"


def check_stored_value(slot: str, value: Any, limits: SandboxLimits) -> int:
    """TooLarge unless ``value`` (plain data, or channel data from a worker) may be stored in a
    slot: its nesting depth and its encoded size within the limits. Its encoded size."""
    _check_depth(slot, value, limits.max_value_depth)  # first: packing fails on very deep values
    size = len(wire.pack(value))
    if size > limits.max_slot_bytes:
        raise TooLarge(f"slot {slot!r}: a value of {size} bytes is over the limit of {limits.max_slot_bytes}")
    return size


def _check_depth(slot: str, value: Any, limit: int, depth: int = 0) -> None:
    if depth > limit:
        raise TooLarge(f"slot {slot!r}: a value nested more than {limit} levels deep")
    if isinstance(value, (list, dict)):
        for item in value.values() if isinstance(value, dict) else value:
            _check_depth(slot, item, limit, depth + 1)


def digest_of(source: str) -> str:
    """The sha256 of a method's source: the key of compiled code, and what an approval names."""
    return hashlib.sha256(source.encode()).hexdigest()


@dataclass
class OutsideWrites:
    """The slots a call wrote on objects other than its receiver, its arguments and the objects it
    made: each (object, slot) once, the first MAX_OUTSIDE_WRITES_KEPT of them, and how many more."""

    writes: list[tuple[UvmObject, str]] = field(default_factory=list)
    more: int = 0


class CallHost:
    """The handle table and the rules of one call (see the module docstring)."""

    def __init__(self, limits: SandboxLimits):
        self.limits = limits
        self.objects: list[UvmObject] = []
        self.handles: dict[int, int] = {}  # id(object) -> handle
        self.refusal: BatosError | None = None
        self.written_bytes = 0
        self.new_objects = 0
        self.given: set[int] = set()  # handles of the receiver and the arguments
        self.outside = OutsideWrites()  # slots written on any other object the image already held
        self._outside_seen: set[tuple[int, str]] = set()

    # values out ------------------------------------------------------------------------------------

    def handle(self, obj: UvmObject) -> int:
        key = id(obj)
        if key not in self.handles:
            self.handles[key] = len(self.objects)
            self.objects.append(obj)
        return self.handles[key]

    def outgoing(self, value: Any) -> Any:
        """An image value as channel data: objects become handles, anything that is not plain
        data becomes a description; walked at most ``max_nodes`` nodes deep in all."""
        return self.sized(value)[0]

    def sized(self, value: Any) -> tuple[Any, int]:
        """:meth:`outgoing`, and about how many bytes the value will take on the channel."""
        budget = [self.limits.max_nodes, 0]  # nodes left, bytes so far
        return self._outgoing(value, budget, 0), budget[1]

    def _outgoing(self, value: Any, budget: list[int], depth: int) -> Any:
        budget[0] -= 1
        budget[1] += len(value) + 5 if isinstance(value, (str, bytes)) else 9
        if budget[0] < 0 or depth > self.limits.max_value_depth:
            raise TooLarge("a value is too large or too deeply nested to give to a method")
        if isinstance(value, (str, bytes, bool, int, float, type(None))):
            return value  # an int beyond 64 bits crosses as decimal text
        if isinstance(value, UvmObject):
            return Ref(self.handle(value))
        if isinstance(value, Method):
            return {"$method": value.selector}
        if isinstance(value, (list, tuple, set, frozenset, PersistentList)):
            return [self._outgoing(v, budget, depth + 1) for v in value]
        if isinstance(value, (dict, PersistentMapping)):
            return {k if isinstance(k, (str, int)) else str(k): self._outgoing(v, budget, depth + 1) for k, v in value.items()}
        return {"$repr": f"<{type(value).__name__}>"}

    def receiver_slots(self, receiver: UvmObject) -> dict[str, Any]:
        """The receiver's own data slots, as many as fit in MAX_SNAPSHOT_BYTES (the rest are read
        on demand)."""
        snapshot, size = {}, 0
        for name, value in receiver._slots.items():
            if isinstance(value, Method):
                continue
            try:
                plain, bytes_ = self.sized(value)
            except TooLarge:
                continue
            size += bytes_
            if size > MAX_SNAPSHOT_BYTES:
                break
            snapshot[name] = plain
        return snapshot

    # values in -------------------------------------------------------------------------------------

    def obj(self, handle: Any) -> UvmObject:
        if not isinstance(handle, int) or not 0 <= handle < len(self.objects):
            raise ChannelError(f"the worker named handle {handle!r}, which it was never given")
        return self.objects[handle]

    def incoming(self, value: Any) -> Any:
        """Channel data as an image value (handles back to objects)."""
        if isinstance(value, Ref):
            return self.obj(value._handle)
        if isinstance(value, list):
            return [self.incoming(v) for v in value]
        if isinstance(value, dict):
            return {k: self.incoming(v) for k, v in value.items()}
        return value

    # requests ---------------------------------------------------------------------------------------

    def apply(self, writes: Any) -> None:
        """Check and apply a write set; the first refusal is kept and ends the call."""
        if not isinstance(writes, list):
            raise ChannelError("a write set must be a list")
        for write in writes:
            if not (isinstance(write, list) and len(write) == 4 and isinstance(write[1], str)):
                raise ChannelError("a malformed write")
            handle, name, value, deleted = write
            target = self.obj(handle)
            try:
                self._apply_one(target, name, value, bool(deleted))
                if handle not in self.given and target._p_oid is not None:  # no oid yet: made by this call
                    self._note_outside(handle, target, name)
            except (Protected, TooLarge) as exc:
                self.refusal = self.refusal or exc
                raise
            except (TypeError, ValueError) as exc:
                self.refusal = self.refusal or BatosError(str(exc), code="bad_request")
                raise self.refusal from None

    def _note_outside(self, handle: int, target: UvmObject, name: str) -> None:
        if (handle, name) in self._outside_seen:
            return
        self._outside_seen.add((handle, name))
        if len(self.outside.writes) < MAX_OUTSIDE_WRITES_KEPT:
            self.outside.writes.append((target, name))
        else:
            self.outside.more += 1

    def count_written(self, size: int) -> None:
        """Add ``size`` bytes to what this message writes; TooLarge past the limit."""
        self.written_bytes += size
        if self.written_bytes > self.limits.max_write_bytes:
            raise TooLarge(f"one message may write at most {self.limits.max_write_bytes} bytes "
                           "(slot names, values and the objects it creates)")

    def count_clone(self, receiver: UvmObject, deep: bool) -> None:
        """Count what cloning ``receiver`` would write (every object a deep clone copies) before
        it is done; TooLarge when that is over this message's limits."""
        stack, seen = [receiver], set()
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            self.new_objects += 1
            if self.new_objects > MAX_NEW_OBJECTS:
                raise TooLarge(f"one message may create at most {MAX_NEW_OBJECTS} objects")
            self.count_written(OBJECT_BYTES)
            for name, value in obj._slots.items():
                if name == PARENT_SLOT:
                    continue
                self.count_written(len(name) + self.sized(value)[1])
                if deep and isinstance(value, UvmObject):
                    stack.append(value)

    def _apply_one(self, target: UvmObject, name: str, value: Any, deleted: bool) -> None:
        if not name or name.startswith("_") or len(name) > 256 or not name.isprintable():
            raise ValueError(f"a method may not write a slot named {name[:64]!r}")
        if deleted:
            check_writable(target, name)
            target._slots.pop(name, None)
            return
        check_writable(target, name, value)
        self.count_written(len(name.encode()) + check_stored_value(name, value, self.limits))
        converted = self.incoming(value)
        if name == PARENT_SLOT:
            check_parents(converted)
        setattr(target, name, converted)

    def answer_lookup(self, message: dict) -> dict:
        receiver = self.obj(message.get("h"))
        name = message.get("name")
        if not isinstance(name, str) or name.startswith("_"):
            raise ChannelError("a lookup needs a public name")
        value, holder = lookup(receiver, name)
        if holder is None:
            return {"k": "missing"}
        if isinstance(value, Method):
            if value.origin == "primitive":
                return {"k": "primitive"} if value.primitive in PRIMITIVES_FOR_METHODS else {"k": "service"}
            if value.facet_system:
                return {"k": "service"}
            return {"k": "method", "selector": value.selector, "digest": method_digest(value),
                    **method_payload(value.selector, value.source)}
        return {"k": "data", "v": self.outgoing(value)}

    def answer_primitive(self, message: dict) -> Any:
        receiver = self.obj(message.get("h"))
        name = message.get("name")
        value, holder = lookup(receiver, name) if isinstance(name, str) else (None, None)
        if not (isinstance(value, Method) and value.origin == "primitive" and value.primitive in PRIMITIVES_FOR_METHODS):
            raise ChannelError(f"{name!r} is not a primitive a method may call")
        args = self.incoming(message.get("args") or [])
        kwargs = self.incoming(message.get("kwargs") or {})
        if not isinstance(args, list) or not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise ChannelError("malformed arguments")
        if value.primitive == "clone":
            self.count_clone(receiver, bool(kwargs.get("deep", args[0] if args else False)))
        try:
            result = primitives.get(value.primitive)(receiver, *args, **kwargs)
        except TypeError as exc:
            raise MethodError(f"{name}: {exc}") from None
        return self.outgoing(result)


def method_payload(selector: str, source: str) -> dict[str, Any]:
    """What a worker is sent of a method: its code, compiled here once (cached); or, when
    RestrictedPython refuses the source, the source itself (the worker compiles it, and reports
    the refusal as the method's error)."""
    try:
        return {"code": method_code(selector, source)}
    except SyntaxError:
        return {"source": source}


def method_digest(method: Method) -> str:
    cached = getattr(method, "_v_digest", None)
    if cached is None or cached[0] != method.source:
        cached = (method.source, digest_of(method.source))
        method._v_digest = cached
    return cached[1]


def run_method(pool: SandboxPool, selector: str, source: str, receiver: UvmObject, args: list, kwargs: dict,
               budget: float, digest: str | None = None, outside_writes: OutsideWrites | None = None) -> Any:
    """Run ``source``'s function on ``receiver`` in a sandbox worker; its result as an image value.

    Its writes are applied to the objects of the caller's transaction as they arrive; on any
    error the caller must abort. Raises MethodError, MethodTimeout, Protected, TooLarge, or
    SandboxUnavailable. ``outside_writes``, when given, gets the slots the call wrote on objects
    other than its receiver, its arguments and the objects it made (see OutsideWrites).
    """
    host = CallHost(pool.limits)
    digest = digest or digest_of(source)
    host.handle(receiver)
    sent_args, sent_kwargs = host.outgoing(list(args)), host.outgoing(dict(kwargs))
    host.given = set(range(len(host.objects)))
    nonce = secrets.token_hex(16)
    job = {"t": "call", "n": nonce, "selector": selector, "digest": digest, **method_payload(selector, source),
           "slots": host.receiver_slots(receiver), "args": sent_args, "kwargs": sent_kwargs}
    try:
        worker = pool.checkout(timeout=budget)
    except TimeoutError:
        raise SandboxUnavailable("every sandbox worker is busy; retry shortly") from None
    deadline = time.monotonic() + budget
    answered = [False]  # a worker that sent its final frame is fit for the next call
    try:
        worker.channel.send(job)
        result = _serve(worker, host, nonce, deadline, answered)
        if outside_writes is not None:
            outside_writes.writes.extend(host.outside.writes)
            outside_writes.more += host.outside.more
        return result
    except ChannelTimeout:
        raise MethodTimeout(budget) from None
    except FrameTooLarge as exc:
        raise TooLarge(f"the method sent {exc.size} bytes at once; the limit is {exc.limit}") from None
    except ChannelError as exc:
        raise MethodError(f"the method's sandbox worker failed: {exc}") from None
    except OSError as exc:
        raise MethodError(f"the method's sandbox worker failed: {exc}") from None
    finally:
        if answered[0]:
            pool.checkin(worker)
        else:
            pool.discard(worker)


def _serve(worker, host: CallHost, nonce: str, deadline: float, answered: list[bool]) -> Any:
    channel = worker.channel
    while True:
        message = channel.receive(deadline)
        if not isinstance(message, dict):
            raise ChannelError("a frame that is not a map")
        if message.get("n") != nonce:  # left by an earlier call, or forged: the worker is done for
            raise ChannelError("a frame that does not answer the current call")
        kind = message.get("t")
        if kind == "done":
            answered[0] = True
            if message.get("writes") and message.get("ok"):
                host.apply(message["writes"])
            if host.refusal is not None:
                raise host.refusal
            if message.get("ok"):
                return host.incoming(message.get("v"))
            if "refused" in message:
                raise MethodError(f"the method was refused: {message['refused']}")
            raise MethodError(str(message.get("error", "the method failed"))[:2200])
        if kind not in ("lookup", "prim"):
            raise ChannelError(f"an unknown request {kind!r}")
        try:
            host.apply(message.get("writes") or [])
            value = host.answer_lookup(message) if kind == "lookup" else host.answer_primitive(message)
            channel.send({"ok": True, "v": value})
        except BatosError as exc:  # refused: the call fails with it, whatever the method does next
            host.refusal = host.refusal or exc
            channel.send({"ok": False, "error": str(exc)})
