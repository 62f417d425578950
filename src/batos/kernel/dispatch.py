"""Dispatch: what each op does to the image, run inside one worker transaction.

``send`` is the heart: target -> lookup along ``parent*`` -> call the Method with a time budget;
a selector found nowhere goes to the receiver's ``_doesNotUnderstand_``. Results leave as plain
data (see batos.image.values). Any error raised here is a ProtocolError with its code, and the
worker aborts the transaction, so a failed request writes nothing.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

import persistent
from ZODB.POSException import POSKeyError

from batos.errors import BatosError
from batos.image import primitives
from batos.image.objects import PARENT_SLOT, Method, MethodSourceError, UvmObject, function_name_of, lookup, oid_text
from batos.image.protection import check_parents, check_writable, record_outside_writes, visible_to
from batos.image.traits import NotUnderstood, describe
from batos.image.values import ValueTooLarge, from_plain, to_plain
from batos.kernel import services
from batos.kernel.protocol import Code, ProtocolError
from batos.mind import guardian
from batos.mind.cycle import is_facet
from batos.principals import OWNER, Principal
from batos.sandbox import SandboxPool, run_method
from batos.sandbox.host import OutsideWrites, check_stored_value, method_digest
from batos.sandbox.restricted import check_compiles

OID_TEXT = re.compile(r"^0x[0-9a-fA-F]{1,16}$")


SYNTHESIZE = "synthesize"  # the runtime's answer to a message nothing understands


@dataclass(frozen=True)
class ServiceCall:
    """A send answered by a runtime service, outside any transaction (see primitives.register_service)."""

    service: str
    receiver: str
    args: tuple
    kwargs: dict
    options: dict | None = None  # intent, examples, wait: for a mission, never for the method


def resolve_target(root, target: str, principal: Principal = OWNER) -> UvmObject:
    """The object a request names: a root name, or an oid written ``0x..``. An object that
    belongs to someone (a conversation, a cycle answering in one: see ``owner_key``) is NotFound
    for any other principal but an admin, whatever names it."""
    if OID_TEXT.fullmatch(target):
        try:
            obj = root._p_jar.get(int(target, 16).to_bytes(8, "big"))
        except POSKeyError:
            raise ProtocolError(Code.NOT_FOUND, f"no object has oid {target}") from None
    else:
        obj = root.get(target)
        if obj is None:
            names = ", ".join(sorted(k for k, v in root.items() if isinstance(v, UvmObject)))
            raise ProtocolError(Code.NOT_FOUND, f"no root object named {target!r} (root objects: {names})")
    if not isinstance(obj, UvmObject) or not visible_to(obj, principal):
        raise ProtocolError(Code.NOT_FOUND, f"{target} is not a UvmObject" if not isinstance(obj, UvmObject)
                            else f"no object has oid {target}")
    return obj



def _check_slot_name(name: str) -> None:
    if name.startswith("_"):
        raise ProtocolError(Code.BAD_REQUEST, f"slot names may not begin with '_' ({name!r})")
    if not name.isprintable():
        raise ProtocolError(Code.BAD_REQUEST, f"slot names are printable characters only ({name!r})")


def _incoming(root, value: Any, principal: Principal = OWNER) -> Any:
    return from_plain(value, lambda oid: resolve_target(root, oid, principal))


def _adopt_new_objects(root, value: Any) -> None:
    """Give oids to new UvmObjects in a result, so the reply can name them."""
    if isinstance(value, persistent.Persistent):
        if value._p_jar is None and isinstance(value, UvmObject):
            root._p_jar.add(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _adopt_new_objects(root, item)
    elif isinstance(value, dict):
        for item in value.values():
            _adopt_new_objects(root, item)


@dataclass
class Dispatcher:
    """Maps each op to a function of the root, run by a worker inside one transaction.

    Stored methods run in ``sandbox``'s workers, never here; primitives run here.
    """

    sandbox: SandboxPool
    method_budget: float = 10.0
    synthesize_missing: bool = False
    max_source_bytes: int = guardian.MAX_SOURCE_BYTES

    def invoke(self, root, method: Method, receiver: UvmObject, args: list, kwargs: dict,
               principal: Principal = OWNER) -> Any:
        """Run a stored method in the sandbox; its failures become error codes. Slots it wrote
        beyond its receiver, arguments and new objects are recorded for the doctor."""
        if method.origin == "primitive":
            try:
                return primitives.get(method.primitive)(receiver, *args, **kwargs)
            except NotUnderstood as exc:
                raise ProtocolError(Code.NOT_UNDERSTOOD, str(exc)) from None
            except BatosError as exc:
                raise ProtocolError(exc.code, str(exc)) from None
            except Exception as exc:
                raise ProtocolError(Code.METHOD_ERROR, f"{method.selector}: {type(exc).__name__}: {exc}") from None
        outside = OutsideWrites()
        try:
            result = run_method(self.sandbox, method.selector, method.source, receiver, args, kwargs,
                                self.method_budget, digest=method_digest(method), outside_writes=outside)
        except BatosError as exc:
            raise ProtocolError(exc.code, str(exc)) from None
        if outside.writes:
            record_outside_writes(root, method.selector, receiver, outside.writes, principal, outside.more)
        return result

    def op_describe(self, root, fields: dict, max_nodes: int | None = None, principal: Principal = OWNER) -> Any:
        """``max_nodes``: raise ValueTooLarge, reading nothing more, for an object with more
        slots or a description with more parts (the caller then reads it where time is cheaper)."""
        receiver = resolve_target(root, fields["target"], principal)
        if max_nodes is None:
            return _plain_reply(describe, receiver)
        if next(itertools.islice(iter(receiver._slots.keys()), max_nodes, None), _NONE) is not _NONE:
            raise ValueTooLarge(f"more than {max_nodes} slots")
        return to_plain(describe(receiver), max_nodes)

    def op_get(self, root, fields: dict, max_nodes: int | None = None, principal: Principal = OWNER) -> Any:
        """``max_nodes``: as for op_describe, for a value with more parts."""
        receiver = resolve_target(root, fields["target"], principal)
        value, holder = lookup(receiver, fields["slot"])
        if holder is None:
            raise ProtocolError(Code.NOT_FOUND, f"{receiver!r} has no slot {fields['slot']!r}")
        if max_nodes is not None:
            return to_plain(value, max_nodes)
        return _plain_reply(to_plain, value)

    def op_set(self, root, fields: dict, principal: Principal = OWNER) -> Any:
        receiver = resolve_target(root, fields["target"], principal)
        slot = fields["slot"]
        _check_slot_name(slot)
        _guarded(check_stored_value, slot, fields["value"], self.sandbox.limits)
        _guarded(check_writable, receiver, slot, fields["value"])
        value = _incoming(root, fields["value"], principal)
        if slot == PARENT_SLOT:
            _guarded(check_parents, value)
        setattr(receiver, slot, value)
        return _plain_reply(to_plain, receiver._slots[slot])

    def op_define(self, root, fields: dict, principal: Principal = OWNER) -> Any:
        receiver = resolve_target(root, fields["target"], principal)
        source = fields["source"]
        if len(source.encode()) > self.max_source_bytes:
            raise ProtocolError(Code.TOO_LARGE, f"a method's source may be at most {self.max_source_bytes} bytes")
        try:
            selector = function_name_of(source)
            if fields.get("selector", selector) != selector:
                raise MethodSourceError(f"the source defines {selector!r}, not {fields['selector']!r}")
            _check_slot_name(selector)
        except (MethodSourceError, SyntaxError) as exc:
            raise ProtocolError(Code.INVALID_SOURCE, str(exc)) from None
        try:
            guardian.audit(source, selector, self.max_source_bytes)
        except guardian.GuardianError as exc:
            raise ProtocolError(Code.GUARDIAN_REJECTED, f"{type(exc).__name__}: {exc}") from None
        try:
            check_compiles(source, f"<define {selector}>")
        except SyntaxError as exc:
            raise ProtocolError(Code.INVALID_SOURCE, f"RestrictedPython refused it: {exc}") from None
        _guarded(check_writable, receiver, selector)
        current = receiver._slots.get(selector)
        method = current.successor(source) if isinstance(current, Method) else Method(selector, source)
        setattr(receiver, selector, method)
        return {"target": oid_text(receiver), "selector": selector, "version": method.version}

    def op_methods(self, root, fields: dict, principal: Principal = OWNER) -> Any:
        """A method's current source and provenance, and every earlier version."""
        method = self._own_method(root, fields, principal)
        return {**method.record(), "selector": method.selector, "model": getattr(method, "model", None),
                "history": [dict(h) for h in method.earlier_versions()]}

    def op_method_rollback(self, root, fields: dict, principal: Principal = OWNER) -> Any:
        """Reinstall version N of a method as a new version (history keeps everything)."""
        receiver = resolve_target(root, fields["target"], principal)
        method = self._own_method(root, fields, principal)
        versions = {h["version"]: h for h in method.earlier_versions()}
        wanted = versions.get(fields["version"])
        if wanted is None or wanted.get("origin") == "primitive":
            known = ", ".join(str(v) for v in sorted(versions)) or "none"
            raise ProtocolError(Code.NOT_FOUND, f"{fields['selector']} has no earlier version {fields['version']} (earlier: {known})")
        _guarded(check_writable, receiver, fields["selector"])
        restored = method.successor(wanted["source"], origin=wanted["origin"], persona=wanted.get("persona"),
                                    cycle=wanted.get("cycle"), facet_system=wanted.get("facet_system"))
        setattr(receiver, fields["selector"], restored)
        return {"selector": fields["selector"], "version": restored.version, "restored_from": fields["version"]}

    def _own_method(self, root, fields: dict, principal: Principal = OWNER) -> Method:
        receiver = resolve_target(root, fields["target"], principal)
        method = receiver._slots.get(fields["selector"])
        if not isinstance(method, Method):
            raise ProtocolError(Code.NOT_FOUND, f"{receiver!r} has no method {fields['selector']!r} of its own")
        return method

    def op_send(self, root, fields: dict, principal: Principal = OWNER) -> Any:
        receiver = resolve_target(root, fields["target"], principal)
        selector = fields["selector"]
        args = _incoming(root, fields.get("args", []), principal)
        kwargs = _incoming(root, fields.get("kwargs", {}), principal)
        value, holder = lookup(receiver, selector)
        if is_facet_intent(selector, value) and self.synthesize_missing:
            # a facet slot holding its intent: compiled on first use, from that intent
            options = {"intent": value, **{k: fields[k] for k in ("wait",) if k in fields}}
            return ServiceCall(SYNTHESIZE, oid_text(receiver), (selector, *args), dict(kwargs), options)
        if holder is None and self.synthesize_missing:
            check_examples(fields.get("examples") or [])
            options = {k: fields[k] for k in ("intent", "examples", "wait") if k in fields}
            return ServiceCall(SYNTHESIZE, oid_text(receiver), (selector, *args), dict(kwargs), options)
        if holder is None:
            fallback, _ = lookup(receiver, "_doesNotUnderstand_")
            if not isinstance(fallback, Method):
                raise ProtocolError(Code.NOT_UNDERSTOOD, f"{receiver!r} does not understand {selector!r}")
            result = self.invoke(root, fallback, receiver, [selector, *args], kwargs, principal)
        elif isinstance(value, Method) and value.origin == "primitive" and primitives.is_service(value.primitive):
            return ServiceCall(value.primitive, oid_text(receiver), tuple(args), dict(kwargs))
        elif isinstance(value, Method) and value.facet_system:
            bound = receiver._slots.get("expert")  # a persona's facet runs under the persona's expert
            return ServiceCall(services.INFER, oid_text(receiver), tuple(args), {**kwargs, "system": value.facet_system},
                               {"bound_expert": bound} if isinstance(bound, str) else None)
        elif isinstance(value, Method):
            result = self.invoke(root, value, receiver, args, kwargs, principal)
        elif args or kwargs:
            raise ProtocolError(Code.BAD_REQUEST, f"slot {selector!r} holds data, not a method; it takes no arguments")
        else:
            return _plain_reply(to_plain, value)  # stored data: nothing new to adopt
        _adopt_new_objects(root, result)
        return _plain_reply(to_plain, result)


def is_facet_intent(selector: str, value: Any) -> bool:
    """A facet not compiled yet: its slot holds its intent."""
    return is_facet(selector) and isinstance(value, str) and bool(value.strip())


def _guarded(check, *args: Any) -> None:
    """Run a protection check, its refusal as the protocol's error code."""
    try:
        check(*args)
    except BatosError as exc:
        raise ProtocolError(exc.code, str(exc)) from None


_NONE = object()


def _plain_reply(convert, value: Any) -> Any:
    try:
        return convert(value)
    except ValueTooLarge as exc:
        raise ProtocolError(Code.TOO_LARGE, str(exc)) from None


EXAMPLE_KEYS = {"slots": dict, "args": list, "kwargs": dict, "after": dict}


def check_examples(examples: list) -> None:
    """Examples for a method cycle as the cycle reads them, or ProtocolError(bad_request) saying
    which is not: each a map of ``slots``, ``args``, ``kwargs``, ``result`` and ``after``, its
    names plain identifiers."""
    for number, example in enumerate(examples, 1):
        if not isinstance(example, dict):
            raise ProtocolError(Code.BAD_REQUEST, f"example {number} is not a map of slots, args, kwargs, result, after")
        unknown = sorted(set(example) - {*EXAMPLE_KEYS, "result"})
        if unknown:
            raise ProtocolError(Code.BAD_REQUEST, f"example {number} has unknown keys: {', '.join(map(str, unknown))}")
        for key, kind in EXAMPLE_KEYS.items():
            value = example.get(key)
            if value is not None and not isinstance(value, kind):
                raise ProtocolError(Code.BAD_REQUEST, f"example {number}: {key} must be a {kind.__name__}")
            if isinstance(value, dict) and not all(isinstance(k, str) and k.isidentifier() for k in value):
                raise ProtocolError(Code.BAD_REQUEST, f"example {number}: the names in {key} must be identifiers")
