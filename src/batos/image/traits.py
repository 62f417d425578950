"""The primitives every object inherits from ``traits_obj``."""

from __future__ import annotations

from typing import Any

from batos.image import primitives
from batos.image.objects import (
    PARENT_SLOT, Method, UvmObject, delegation_chain, oid_text, parents_of,
)
from batos.image.values import to_plain


class NotUnderstood(AttributeError):
    """No object in the receiver's delegation chain has a slot for the selector."""

    def __init__(self, receiver: UvmObject, selector: str):
        self.receiver = receiver
        self.selector = selector
        super().__init__(f"{receiver!r} does not understand {selector!r}")


@primitives.register("clone")
def clone(receiver: UvmObject, deep: bool = False) -> UvmObject:
    """A new object with copies of the receiver's own slots (see IUvmObject.clone)."""
    return receiver.clone(deep=bool(deep))


@primitives.register("describe")
def describe(receiver: UvmObject) -> dict[str, Any]:
    """The receiver's oid, own slots, parents, and every selector it understands."""
    own = dict(receiver._slots)
    understood = sorted({
        name for holder in delegation_chain(receiver)
        for name, value in holder._slots.items() if isinstance(value, Method)
    })
    return {
        "oid": oid_text(receiver),
        "name": own.get("name") if isinstance(own.get("name"), str) else None,
        "slots": {name: to_plain(value) for name, value in own.items() if name != PARENT_SLOT},
        "parents": [to_plain(p) for p in parents_of(receiver)],
        "methods": understood,
    }


@primitives.register("oid")
def oid(receiver: UvmObject) -> str | None:
    """The receiver's oid as text (``0x..``), the name clients address it by."""
    return oid_text(receiver)


@primitives.register("slot_names")
def slot_names(receiver: UvmObject) -> list[str]:
    """The names of the receiver's own slots (not its parents')."""
    return sorted(name for name in receiver._slots if name != PARENT_SLOT)


@primitives.register("doesNotUnderstand")
def does_not_understand(receiver: UvmObject, selector: str, *args: Any, **kwargs: Any) -> Any:
    """The last resort of dispatch; this default refuses. Later layers register a replacement."""
    raise NotUnderstood(receiver, selector)
