"""The Synaptic Bridge's wire protocol: one msgpack map per request, one per reply.

Request: ``{"id": str, "op": str, ...op fields}``. Reply: ``{"id", "ok": true, "result"}`` or
``{"id", "ok": false, "error": {"code", "message"}}``. Long operations may first send frames
``{"id", "event": {...}}``. Every way a request can be wrong maps to an error code below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import ormsgpack

from batos.errors import BatosError
from batos.principals import OWNER, Principal

MAX_MESSAGE_SIZE = 16 * 1024 * 1024
MAX_FRAMES = 8  # identity frames from a few proxy hops, a delimiter, the payload
MAX_ID_LENGTH = 128
MAX_NAME_LENGTH = 256
MAX_CONTAINERS = 1_000_000  # lists and maps in one payload (an upload chunk of 4 MiB of random bytes looks like ~500,000)
MAX_DAYS = 36500  # a century: older is "everything", and a larger number is a mistake


class Code:
    """Error codes a client can rely on."""

    BAD_REQUEST = "bad_request"  # malformed payload, missing or mistyped fields
    UNKNOWN_OP = "unknown_op"
    NOT_FOUND = "not_found"  # target object or slot does not exist
    NOT_UNDERSTOOD = "not_understood"  # no method for the selector anywhere in the chain
    INVALID_SOURCE = "invalid_source"  # define: source is not one function of that name
    GUARDIAN_REJECTED = "guardian_rejected"  # define: the Guardian refused the source
    SYNTHESIS_FAILED = "synthesis_failed"  # a cognitive cycle ended FAILED
    AWAITING_APPROVAL = "awaiting_approval"  # the cycle's method waits for `batos cycles approve`
    METHOD_ERROR = "method_error"  # the method raised
    TIMEOUT = "timeout"  # the method ran past its time budget; nothing was written
    CONFLICT = "conflict"  # write conflicts persisted past the retry cap; nothing was written
    MODEL_UNAVAILABLE = "model_unavailable"  # no language model (off, failed, or not ready in time)
    BACKEND_ERROR = "backend_error"  # the language model backend failed
    IMPORT_FAILED = "import_failed"  # a model or adapter could not be imported; nothing was written
    PROTECTED = "protected"  # a kernel object or kernel slot; only the kernel changes it
    TOO_LARGE = "too_large"  # a value, source, reply or write set over its limit; nothing was written
    FORBIDDEN = "forbidden"  # the client's role may not do this (an admin's op); nothing was done
    RATE_LIMITED = "rate_limited"  # too many cycles started by this client in the last minute
    BUSY = "busy"  # too many requests in flight
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"


class ProtocolError(BatosError):
    """A request that cannot be served; carries its error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message, code)
        self.message = message
        self.request_id: str | None = None  # the request's id, when the payload had a usable one


@dataclass(frozen=True)
class Op:
    """One op: its required and optional fields (name -> accepted types), whether it may write, and
    which service serves it."""

    required: dict[str, tuple]
    optional: dict[str, tuple]
    writes: bool
    service: str
    admin: bool = False  # only a principal with the admin role may ask it


SERVICES = ("kernel", "image", "cycles", "models", "mind", "memory")


# The one place an op is declared. A service has a coroutine ``op_<name>`` for each of its ops.
_ANY = object
OPS: dict[str, Op] = {
    "ping": Op({}, {}, False, "kernel"),
    "stats": Op({}, {}, False, "kernel"),
    "pack": Op({}, {"days": (int, float)}, True, "kernel", admin=True),
    "describe": Op({"target": (str,)}, {}, False, "image"),
    "get": Op({"target": (str,), "slot": (str,)}, {}, False, "image"),
    "set": Op({"target": (str,), "slot": (str,), "value": (_ANY,)}, {}, True, "image"),
    "send": Op({"target": (str,), "selector": (str,)},
               {"args": (list,), "kwargs": (dict,), "intent": (str,), "examples": (list,), "wait": (bool,)}, True, "image"),
    "define": Op({"target": (str,), "source": (str,)}, {"selector": (str,)}, True, "image"),
    "methods": Op({"target": (str,), "selector": (str,)}, {}, False, "image"),
    "method_rollback": Op({"target": (str,), "selector": (str,), "version": (int,)}, {}, True, "image"),
    "cycles_list": Op({}, {"all": (bool,)}, False, "cycles"),
    "cycle_show": Op({"cycle": (str,)}, {}, False, "cycles"),
    "cycle_decide": Op({"cycle": (str,), "approve": (bool,)}, {"digest": (str,)}, True, "cycles", admin=True),
    "cycles_prune": Op({}, {"days": (int, float)}, True, "cycles", admin=True),
    "upload": Op({"upload_id": (str,), "offset": (int,), "data": (bytes,)}, {}, False, "models"),
    "model_import": Op({}, {"upload_id": (str,), "hub_id": (str,), "name": (str,), "filename": (str,)}, True, "models",
                       admin=True),
    "model_list": Op({}, {}, False, "models"),
    "model_use": Op({"name": (str,)}, {}, True, "models", admin=True),
    "expert_import": Op({"upload_id": (str,)}, {"name": (str,)}, True, "models", admin=True),
    "ask": Op({"question": (str,)}, {"persona": (str,), "conversation": (str,), "depth": (str,), "turns": (int,)},
              True, "mind"),
    "route": Op({"question": (str,)}, {}, False, "mind"),
    "route_teach": Op({"text": (str,), "archetype": (str,)}, {}, True, "mind", admin=True),
    "personas": Op({}, {}, False, "mind"),
    "conversations_list": Op({}, {}, False, "mind"),
    "conversation_show": Op({"conversation": (str,)}, {}, False, "mind"),
    "conversations_prune": Op({}, {"days": (int, float)}, True, "mind", admin=True),
    "memory_ingest": Op({"upload_id": (str,), "source": (str,)}, {}, True, "memory"),
    "memory_search": Op({"query": (str,)}, {"k": (int,), "mode": (str,), "diverse": (bool,)}, False, "memory"),
    "memory_show": Op({"chunk": (int,)}, {}, False, "memory"),
    "memory_list": Op({}, {}, False, "memory"),
    "memory_stats": Op({}, {}, False, "memory"),
    "memory_forget": Op({"source": (str,)}, {}, True, "memory"),
}
WRITING_OPS = frozenset(name for name, op in OPS.items() if op.writes)
_NAME_FIELDS = ("target", "slot", "selector")


@dataclass(frozen=True)
class Request:
    id: str
    op: str
    fields: dict[str, Any]
    peer: bytes = b""  # who asked, for per-client limits: the principal's key, or without identities the routing identity
    principal: Principal = OWNER


@dataclass
class Context:
    """What a service may know of the request it serves: the request, and how to send it events."""

    request: Request
    emit: Callable[[dict[str, Any]], Awaitable[None]]

    @property
    def peer(self) -> bytes:
        return self.request.peer


# Every byte that could start a msgpack list or map (fixmap, fixarray, array16/32, map16/32) maps to
# 1, any other to 0: counting them bounds, from above, how many containers a payload can hold.
_CONTAINER_HEADERS = bytes(1 if 0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF else 0 for b in range(256))


def may_hold_too_many_containers(payload: bytes) -> bool:
    """Whether ``payload`` could hold more than MAX_CONTAINERS lists and maps: decoding millions
    of them would hold the event loop for seconds (and take gigabytes). Counted in C, from above
    (a byte inside a string counts too), so a payload under the bound is never wrongly refused."""
    return len(payload) > MAX_CONTAINERS and payload.translate(_CONTAINER_HEADERS).count(1) > MAX_CONTAINERS


def has_trailing_bytes(payload: bytes, repacked: bytes) -> bool:
    """Whether ``payload`` (known to decode) holds more than its first msgpack object, given the
    decoded object packed again. An equally long re-encoding settles it at once; otherwise only a
    payload with more than one object still decodes without its last byte (decoding runs in C)."""
    if len(repacked) == len(payload):
        return False
    try:
        ormsgpack.unpackb(payload[:-1])
    except (ormsgpack.MsgpackDecodeError, ValueError, TypeError, RecursionError):
        return False
    return True


def repacked_or_too_deep(message: Any) -> bytes:
    """``message`` packed again; TOO_LARGE when it nests deeper than the encoder's own limit (255
    levels), past which the kernel's converters would exhaust the interpreter's stack."""
    try:
        return ormsgpack.packb(message)
    except TypeError as exc:
        if "ecursion" in str(exc):
            raise ProtocolError(Code.TOO_LARGE, "payload is nested too deeply") from None
        raise ProtocolError(Code.BAD_REQUEST, f"payload holds a value that cannot be read: {exc}") from None


def decode(payload: bytes, peer: bytes = b"", principal: Principal = OWNER) -> Request:
    """Parse and validate one payload frame; ProtocolError says what is wrong with it (with the
    request's ``request_id`` when the payload had a usable one). The payload is decoded once, and
    its fields are checked before anything costs more."""
    if may_hold_too_many_containers(payload):
        raise ProtocolError(Code.TOO_LARGE, f"payload may hold more than {MAX_CONTAINERS} lists and maps; send less at once")
    try:
        message = ormsgpack.unpackb(payload)
    except (ormsgpack.MsgpackDecodeError, ValueError, TypeError, RecursionError) as exc:
        if "ecursion" in str(exc) or isinstance(exc, RecursionError):
            raise ProtocolError(Code.TOO_LARGE, "payload is nested too deeply") from None
        raise ProtocolError(Code.BAD_REQUEST, f"payload is not valid msgpack: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(Code.BAD_REQUEST, f"payload must be a map, not {type(message).__name__}")
    request_id = message.get("id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_ID_LENGTH:
        raise ProtocolError(Code.BAD_REQUEST, f"'id' must be a string of 1 to {MAX_ID_LENGTH} characters")
    try:
        op, fields = _checked_fields(message)
        if has_trailing_bytes(payload, repacked_or_too_deep(message)):
            raise ProtocolError(Code.BAD_REQUEST, "payload has bytes after its msgpack map; send exactly one map per frame")
    except ProtocolError as exc:
        exc.request_id = request_id
        raise
    return Request(request_id, op, fields, peer, principal)


def _checked_fields(message: dict) -> tuple[str, dict[str, Any]]:
    """The op and its fields, each present, known and of its type."""
    op = message.get("op")
    if not isinstance(op, str):
        raise ProtocolError(Code.BAD_REQUEST, "'op' must be a string")
    if op not in OPS:
        raise ProtocolError(Code.UNKNOWN_OP, f"unknown op {op[:64]!r}; known: {', '.join(sorted(OPS))}")
    required, optional = OPS[op].required, OPS[op].optional
    fields = {k: v for k, v in message.items() if k not in ("id", "op")}
    for name, types in required.items():
        if name not in fields:
            raise ProtocolError(Code.BAD_REQUEST, f"op {op!r} needs field {name!r}")
    for name, value in fields.items():
        types = required.get(name) or optional.get(name)
        if types is None:
            raise ProtocolError(Code.BAD_REQUEST, f"op {op!r} takes no field {str(name)[:64]!r}")
        if types != (_ANY,) and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            expected = " or ".join(t.__name__ for t in types)
            raise ProtocolError(Code.BAD_REQUEST, f"field {name!r} must be {expected}, not {type(value).__name__}")
        if name in _NAME_FIELDS and not 0 < len(value) <= MAX_NAME_LENGTH:
            raise ProtocolError(Code.BAD_REQUEST, f"field {name!r} must be 1 to {MAX_NAME_LENGTH} characters")
        if name == "days" and not (math.isfinite(value) and 0 <= value <= MAX_DAYS):
            raise ProtocolError(Code.BAD_REQUEST, f"'days' must be a number from 0 to {MAX_DAYS}, not {value!r}")
    if "kwargs" in fields and not all(isinstance(k, str) for k in fields["kwargs"]):
        raise ProtocolError(Code.BAD_REQUEST, "'kwargs' keys must be strings")
    return op, fields


def encode(message: dict[str, Any]) -> bytes:
    return ormsgpack.packb(message)


def ok_reply(request_id: str | None, result: Any) -> dict[str, Any]:
    return {"id": request_id, "ok": True, "result": result}


def error_reply(request_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": {"code": code, "message": message}}


def event_frame(request_id: str, event: dict[str, Any]) -> dict[str, Any]:
    return {"id": request_id, "event": event}
