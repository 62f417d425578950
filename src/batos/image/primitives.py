"""The primitives registry: kernel behaviours written in Python, named from the image.

The image stores a primitive as a Method whose ``primitive`` attribute is a registry name, never
as a function object; this module maps names to functions in the running process. A primitive
takes the receiver first, like every method.
"""

from __future__ import annotations

from typing import Any, Callable

Primitive = Callable[..., Any]
# The trait primitives every object inherits from traits_obj: selector -> registry name.
TRAIT_PRIMITIVES = {"clone": "clone", "describe": "describe", "oid": "oid", "slot_names": "slot_names",
                    "infer_": "infer", "_doesNotUnderstand_": "doesNotUnderstand"}

_registry: dict[str, Primitive] = {}
_services: set[str] = set()


class UnknownPrimitiveError(LookupError):
    """The image names a primitive this process does not provide."""


def register(name: str) -> Callable[[Primitive], Primitive]:
    """Decorator: make ``fn`` the primitive called ``name`` (re-registering replaces it)."""

    def decorate(fn: Primitive) -> Primitive:
        _registry[name] = fn
        return fn

    return decorate


def register_service(name: str) -> None:
    """Declare ``name`` a service: a primitive the runtime serves outside any transaction (a model
    call, say), so it has no function here and cannot be called from inside a method."""
    _services.add(name)


def is_service(name: str | None) -> bool:
    return name in _services


def get(name: str) -> Primitive:
    if name in _services:
        raise UnknownPrimitiveError(
            f"{name!r} is a service of the runtime; send it as a message, it cannot run inside a method")
    try:
        return _registry[name]
    except KeyError:
        raise UnknownPrimitiveError(
            f"the image refers to primitive {name!r}, which this version of BatOS does not provide"
        ) from None


def names() -> list[str]:
    return sorted(_registry)
