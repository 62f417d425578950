"""UvmObject and Method: the only two kinds of object the image is made of."""

from __future__ import annotations

import ast
import time
from typing import Any, Iterator

import persistent
from BTrees.OOBTree import OOBTree
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping
from zope.interface import implementer

from batos.image import primitives
from batos.image.interfaces import IMethod, IUvmObject

PARENT_SLOT = "parent*"
ORIGINS = ("architect", "synthesized", "primitive")


class MethodSourceError(ValueError):
    """Source text that is not exactly one function definition of the expected name."""


def persistent_copy(value: Any) -> Any:
    """Return ``value`` with plain lists and dicts (at any depth) turned into persistent ones.

    Persistent containers already in ``value`` are kept as they are.
    """
    if isinstance(value, (PersistentList, PersistentMapping)):
        return value
    if isinstance(value, list):
        return PersistentList(persistent_copy(v) for v in value)
    if isinstance(value, dict):
        return PersistentMapping({k: persistent_copy(v) for k, v in value.items()})
    return value


def _fresh_containers(value: Any) -> Any:
    """Copy containers recursively so a clone never shares a list or dict with its original."""
    if isinstance(value, (list, PersistentList)):
        return PersistentList(_fresh_containers(v) for v in value)
    if isinstance(value, (dict, PersistentMapping)):
        return PersistentMapping({k: _fresh_containers(v) for k, v in value.items()})
    return value


@implementer(IUvmObject)
class UvmObject(persistent.Persistent):
    """A prototype object: slots in an OOBTree (one slot written rewrites one bucket of at most a
    few dozen slots, never the whole table), delegation through ``parent*``. Objects written
    before the tree kept their slots in a PersistentMapping; the first write through
    ``__setattr__`` or ``__delattr__`` moves them into a tree."""

    _kernel_slots: str | tuple[str, ...] | None = None  # see batos.image.protection

    def __init__(self, parents: list[UvmObject] | None = None, **slots: Any):
        self._slots = OOBTree()
        if parents:
            self._slots[PARENT_SLOT] = PersistentList(parents)
        for name, value in slots.items():
            self._slots[name] = persistent_copy(value)

    def __getattr__(self, name: str) -> Any:
        # Only called when ordinary lookup fails. Private names never delegate: unpickling and
        # copy protocols probe for them before _slots exists.
        if name.startswith("_"):
            raise AttributeError(name)
        found, holder = lookup(self, name)
        if holder is None:
            raise AttributeError(f"{describe_short(self)} does not understand {name!r}")
        if isinstance(found, Method):
            return BoundMethod(found, self)
        return found

    def __setattr__(self, name: str, value: Any) -> None:
        if self._p_setattr(name, value):
            return
        if name.startswith("_"):
            super().__setattr__(name, value)
            return
        self._slot_table()[name] = persistent_copy(value)  # the tree records the change: one bucket per write

    def __delattr__(self, name: str) -> None:
        if self._p_delattr(name):
            return
        if name.startswith("_"):
            super().__delattr__(name)
            return
        try:
            del self._slot_table()[name]
        except KeyError:
            raise AttributeError(f"{describe_short(self)} has no slot {name!r}") from None

    def __repr__(self) -> str:
        return f"<UvmObject {describe_short(self)}>"

    def _slot_table(self) -> OOBTree:
        """The slots as a tree, moving them out of an older image's PersistentMapping first."""
        if not isinstance(self._slots, OOBTree):
            self._slots = OOBTree(dict(self._slots))
        return self._slots

    def clone(self, deep: bool = False) -> UvmObject:
        """See IUvmObject.clone."""
        return clone_object(self, deep=deep, _seen={})


def parents_of(obj: UvmObject) -> list[UvmObject]:
    """The objects in ``obj``'s ``parent*`` slot that are UvmObjects, in order."""
    parents = obj._slots.get(PARENT_SLOT, ())
    if isinstance(parents, UvmObject):
        return [parents]
    if not isinstance(parents, (list, tuple, PersistentList)):
        return []  # a damaged parent* (the doctor reports it) must not break every lookup
    return [p for p in parents if isinstance(p, UvmObject)]


def delegation_chain(obj: UvmObject) -> Iterator[UvmObject]:
    """``obj`` then every ancestor, depth first, each once (cycles in ``parent*`` are cut)."""
    seen: set[int] = set()
    stack = [obj]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(reversed(parents_of(current)))


_MISSING = object()


def lookup(obj: UvmObject, name: str) -> tuple[Any, UvmObject | None]:
    """Find slot ``name`` along the delegation chain: ``(value, holder)``, holder None if absent."""
    for holder in delegation_chain(obj):
        value = holder._slots.get(name, _MISSING)
        if value is not _MISSING:
            return value, holder
    return None, None


def oid_text(obj: persistent.Persistent) -> str | None:
    """The object's oid as ``0x..`` text, or None before it is first committed or added."""
    oid = obj._p_oid
    if oid is None:
        return None
    return hex(int.from_bytes(oid, "big"))


def describe_short(obj: UvmObject) -> str:
    try:
        name = obj._slots.get("name")
    except AttributeError:
        name = None
    oid = oid_text(obj) or "new"
    return f"{name} ({oid})" if isinstance(name, str) else oid


def clone_object(obj: UvmObject, deep: bool, _seen: dict[int, UvmObject]) -> UvmObject:
    copy = UvmObject()
    _seen[id(obj)] = copy
    for name, value in obj._slots.items():
        if name == PARENT_SLOT:
            copy._slots[name] = PersistentList(value) if not isinstance(value, UvmObject) else value
        elif deep and isinstance(value, UvmObject):
            copy._slots[name] = _seen.get(id(value)) or clone_object(value, True, _seen)
        else:
            copy._slots[name] = _fresh_containers(value)
    return copy


def function_name_of(source: str) -> str:
    """The name of the single top-level function in ``source``; MethodSourceError otherwise."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise MethodSourceError(f"source does not parse: {exc.msg} (line {exc.lineno})") from exc
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    others = [n for n in tree.body if not isinstance(n, ast.FunctionDef)]
    if len(functions) != 1 or others:
        raise MethodSourceError("source must be exactly one top-level 'def' and nothing else")
    function = functions[0]
    if not function.args.args and not function.args.posonlyargs:
        raise MethodSourceError(f"{function.name}() must take the receiver as its first parameter")
    return function.name


@implementer(IMethod)
class Method(persistent.Persistent):
    """Behaviour stored as source text (or as the name of a primitive).

    Earlier versions are reached through ``previous`` (the Method this one replaced), so a new
    version writes its own source once, never the sources before it. Methods written before
    that kept their earlier versions as records in ``history``; both read back the same."""

    facet_system: str | None = None  # images written before facets existed have no such attribute
    facet_intent: str | None = None  # what a compiled facet was compiled from
    previous: Method | None = None  # the version this one replaced (None: none, or an older image's history)
    number: int | None = None  # this version's number (None in older images: len(history) + 1)

    def __init__(
        self,
        selector: str,
        source: str = "",
        origin: str = "architect",
        primitive: str | None = None,
        persona: str | None = None,
        cycle: str | None = None,
        history: list[dict] | None = None,
        facet_system: str | None = None,
        previous: Method | None = None,
    ):
        if origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, not {origin!r}")
        if origin == "primitive":
            if not primitive:
                raise ValueError("a primitive Method needs the primitive's registry name")
        else:
            name = function_name_of(source)
            if name != selector:
                raise MethodSourceError(f"the function is named {name!r}, not {selector!r}")
        self.selector = selector
        self.source = source
        self.origin = origin
        self.primitive = primitive
        self.persona = persona
        self.cycle = cycle
        self.installed_at = time.time()
        self.history = PersistentList(history or [])
        self.previous = previous
        self.number = previous.version + 1 if previous is not None else len(self.history) + 1
        # A facet's source calls self.infer_ with this system prompt; the runtime serves the call
        # outside any transaction, so the method itself never runs in-process.
        self.facet_system = facet_system

    @property
    def version(self) -> int:
        """1 for the first version of a selector, counting up with each reinstall."""
        return self.number if self.number is not None else len(self.history) + 1

    def earlier_versions(self) -> list[dict]:
        """Every earlier version as a record (see :meth:`record`), oldest first."""
        chain, method = [], self
        while method.previous is not None:
            method = method.previous
            chain.append(method.record())
        return list(method.history) + chain[::-1]

    def record(self) -> dict:
        """This version as a plain dict, as an earlier version is shown."""
        return {
            "version": self.version,
            "source": self.source,
            "origin": self.origin,
            "primitive": self.primitive,
            "persona": self.persona,
            "cycle": self.cycle,
            "installed_at": self.installed_at,
            "facet_system": self.facet_system,
        }

    def successor(self, source: str, origin: str = "architect", **provenance: Any) -> Method:
        """A new Method for the same selector whose earlier versions end with this one."""
        return Method(self.selector, source, origin, previous=self, **provenance)

    def __repr__(self) -> str:
        return f"<Method {self.selector} v{self.version} ({self.origin})>"


class SandboxOnly(TypeError):
    """Stored source never runs in the UVM's process; it runs in a sandbox worker."""


class BoundMethod:
    """A Method paired with its receiver at run time; never stored. Calling it runs a primitive;
    a method stored as source runs only in a sandbox worker (send the message instead)."""

    __slots__ = ("method", "receiver")

    def __init__(self, method: Method, receiver: UvmObject):
        self.method = method
        self.receiver = receiver

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.method.origin != "primitive":
            raise SandboxOnly(f"{self.method.selector} is stored source; it runs only in a sandbox worker")
        return primitives.get(self.method.primitive)(self.receiver, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<bound {self.method!r} of {self.receiver!r}>"
