"""Turning a Method's source into code with RestrictedPython.

Every stored method, whoever wrote it, is compiled here. :func:`check_compiles` only compiles (the
UVM uses it to refuse source early and never runs what it compiles; :func:`method_code` is the
same compile, marshalled for a worker); :func:`compile_method` and :func:`define_method` also
execute the ``def`` and are called only inside a sandbox worker. Attribute reads go through a
guard that decides by the type of what is read (plain data's public names, the proxies' slots,
nothing of generators, frames, code or functions; see READABLE), writes are allowed only to capability proxies and
plain containers, and the builtins are a small safe set. Two rewrites come first, because
RestrictedPython refuses them as written: the covenant line ``self._p_changed = True`` becomes
``mark_changed_(self)``, and ``self.x += 1`` / ``self.items[0] += 1`` become plain assignments.

RestrictedPython says of itself that it is not a sandbox on its own; it is one layer of several.
"""

from __future__ import annotations

import ast
import functools
import marshal
import operator
import warnings
from types import CodeType
from typing import Any, Callable

from RestrictedPython import compile_restricted, limited_builtins, safe_builtins
from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence
from RestrictedPython.PrintCollector import PrintCollector

METHOD_FILE_PREFIX = "<batos-method "  # the file name of a method's code, as tracebacks show it
PLAIN_WRITABLE = (list, dict, set, bytearray)
MORE_BUILTINS = {fn.__name__: fn for fn in (
    sorted, min, max, sum, enumerate, zip, map, filter, any, all, reversed, dict, list, tuple, set,
    frozenset, iter, next, format, bytes, bytearray, print, range,
)}
INPLACE = {
    "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
    "//=": operator.ifloordiv, "%=": operator.imod, "**=": operator.ipow, "<<=": operator.ilshift,
    ">>=": operator.irshift, "&=": operator.iand, "|=": operator.ior, "^=": operator.ixor,
}


class _Prepare(ast.NodeTransformer):
    """The two rewrites described in the module docstring."""

    def visit_Assign(self, node: ast.Assign) -> ast.AST:
        target = node.targets[0] if len(node.targets) == 1 else None
        if (isinstance(target, ast.Attribute) and target.attr == "_p_changed"
                and isinstance(target.value, ast.Name) and target.value.id == "self"):
            call = ast.Call(func=ast.Name("mark_changed_", ast.Load()), args=[ast.Name("self", ast.Load())], keywords=[])
            return ast.copy_location(ast.Expr(call), node)
        return self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        if not isinstance(node.target, (ast.Attribute, ast.Subscript)):
            return self.generic_visit(node)
        read = _as_load(node.target)
        value = ast.BinOp(left=read, op=node.op, right=self.visit(node.value))
        return ast.copy_location(ast.Assign(targets=[node.target], value=value), node)


def _as_load(target: ast.AST) -> ast.AST:
    copy = ast.parse(ast.unparse(target), mode="eval").body
    return ast.copy_location(copy, target)


_NO_DEFAULT = object()


def _public_names(kind: type, *left_out: str) -> frozenset[str]:
    return frozenset(name for name in dir(kind) if not name.startswith("_")) - set(left_out)


# What a method may read, by the type of what it reads from: the public names of plain data (on a
# value and on its class, as in ``str.join`` or ``dict.fromkeys``) and an exception's ``args``.
# Anything else (generators, frames, code, functions, tracebacks, iterators, types) offers nothing.
# str.format and format_map walk attributes and items of their arguments by a template's field
# names, so they are left out.
READABLE: dict[type, frozenset[str]] = {
    kind: _public_names(kind) for kind in (
        bytes, bytearray, int, bool, float, complex, list, tuple, dict, set, frozenset, range, slice)
}
READABLE[str] = _public_names(str, "format", "format_map")
READABLE.update({type({}.keys()): frozenset({"isdisjoint"}), type({}.items()): frozenset({"isdisjoint"}),
                 type({}.values()): frozenset()})
EXCEPTION_NAMES = frozenset({"args"})


class NotAccessible(AttributeError):
    """A method asked for an attribute that its sandbox does not offer on that kind of value."""


def readable(obj: Any, name: Any, capabilities: tuple[type, ...]) -> bool:
    """Whether a method may read ``obj.name``: decided by what ``obj`` is, never by the name's
    spelling alone (see READABLE)."""
    if type(name) is not str or name.startswith("_"):
        return False
    if isinstance(obj, capabilities):
        return True  # a capability proxy answers public names with the object's slots
    if isinstance(obj, BaseException):
        return name in EXCEPTION_NAMES
    allowed = READABLE.get(obj) if isinstance(obj, type) else READABLE.get(type(obj))
    return allowed is not None and name in allowed


def make_getattr(capabilities: tuple[type, ...] = ()) -> Callable[..., Any]:
    """The ``getattr`` of restricted code (also behind ``a.b``). Unlike RestrictedPython's
    ``safer_getattr`` a missing name raises (it does not quietly become None), so a message nobody
    understands is an error."""

    def guarded_getattr(obj: Any, name: str, default: Any = _NO_DEFAULT) -> Any:
        if not readable(obj, name, capabilities):
            if default is not _NO_DEFAULT:
                return default
            raise NotAccessible(f"{name!r} of a {type(obj).__name__} is not accessible to a method")
        if default is _NO_DEFAULT:
            return getattr(obj, name)
        return getattr(obj, name, default)

    return guarded_getattr


def make_hasattr(guarded_getattr: Callable[..., Any]) -> Callable[[Any, str], bool]:
    def guarded_hasattr(obj: Any, name: str) -> bool:
        try:
            guarded_getattr(obj, name)
        except AttributeError:
            return False
        return True

    return guarded_hasattr


def _inplacevar(op: str, x: Any, y: Any) -> Any:
    return INPLACE[op](x, y)


def restricted_code(source: str, filename: str) -> CodeType:
    """The module code of ``source`` under RestrictedPython; SyntaxError says why it was refused."""
    tree = ast.fix_missing_locations(_Prepare().visit(ast.parse(source, filename)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        return compile_restricted(tree, filename, "exec")


def check_compiles(source: str, filename: str) -> None:
    """Raise SyntaxError if RestrictedPython refuses ``source``; runs none of it."""
    try:
        restricted_code(source, filename)
    except (RecursionError, MemoryError, ValueError) as exc:
        raise SyntaxError(f"the source is too complex to compile ({type(exc).__name__})") from None


def restricted_globals(capabilities: tuple[type, ...] = ()) -> dict[str, Any]:
    """A fresh global namespace for one restricted function. Writes are allowed to plain
    containers and to instances of ``capabilities`` (the proxies), and reads as READABLE says."""
    return dict(_shared_globals(capabilities))


@functools.lru_cache(maxsize=8)
def _shared_globals(capabilities: tuple[type, ...]) -> dict[str, Any]:
    """What every namespace for ``capabilities`` holds, built once per process. Built in a
    worker's zygote, a call's child copies only this small dict: building the builtins there cost
    each call about a hundred copied pages."""
    allowed = (*PLAIN_WRITABLE, *capabilities)
    guarded_getattr = make_getattr(capabilities)

    def write_guard(obj: Any) -> Any:
        if isinstance(obj, allowed):
            return obj
        raise TypeError(f"a method may not change a {type(obj).__name__}")

    builtins = {**safe_builtins, **limited_builtins, **MORE_BUILTINS,
                "getattr": guarded_getattr, "hasattr": make_hasattr(guarded_getattr)}
    for unwanted in ("setattr", "delattr", "__build_class__"):
        builtins.pop(unwanted, None)
    return {
        "__builtins__": builtins,
        "__name__": "batos.methods",
        "_getattr_": guarded_getattr,
        "_getitem_": operator.getitem,
        "_getiter_": iter,
        "_write_": write_guard,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_inplacevar_": _inplacevar,
        "_print_": PrintCollector,
        "_apply_": _apply,
        "mark_changed_": _mark_changed,
    }


def _apply(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


def _mark_changed(obj: Any) -> None:
    """The covenant line's stand-in: the sandbox notices changed slots itself."""


def compile_method(selector: str, source: str, filename: str,
                   capabilities: tuple[type, ...] = ()) -> Callable[..., Any]:
    """The function ``selector`` defined by ``source`` (runs the ``def``: sandbox workers only)."""
    return define_method(selector, restricted_code(source, filename), capabilities)


def define_method(selector: str, code: CodeType, capabilities: tuple[type, ...] = ()) -> Callable[..., Any]:
    """The function ``selector`` that restricted ``code`` defines (runs the ``def``: sandbox
    workers only)."""
    namespace = restricted_globals(capabilities)
    exec(code, namespace)
    return namespace[selector]


@functools.lru_cache(maxsize=1024)
def method_code(selector: str, source: str) -> bytes:
    """``source`` compiled under RestrictedPython, marshalled: what the UVM sends a sandbox worker,
    so that a worker's fresh child only loads and defines it (compiling there costs it the most).
    Compiling runs none of the source; SyntaxError as for :func:`check_compiles`."""
    try:
        return marshal.dumps(restricted_code(source, f"{METHOD_FILE_PREFIX}{selector}>"))
    except (RecursionError, MemoryError, ValueError) as exc:
        raise SyntaxError(f"the source is too complex to compile ({type(exc).__name__})") from None
