"""Turning a Method's source into code with RestrictedPython.

Every stored method, whoever wrote it, is compiled here. :func:`check_compiles` only compiles (the
UVM uses it to refuse source early and never runs what it compiles); :func:`compile_method` also
executes the ``def`` and is called only inside a sandbox worker. Attribute reads go through a
guard that refuses names beginning with ``_``, writes are allowed only to capability proxies and
plain containers, and the builtins are a small safe set. Two rewrites come first, because
RestrictedPython refuses them as written: the covenant line ``self._p_changed = True`` becomes
``mark_changed_(self)``, and ``self.x += 1`` / ``self.items[0] += 1`` become plain assignments.

RestrictedPython says of itself that it is not a sandbox on its own; it is one layer of several.
"""

from __future__ import annotations

import ast
import operator
import warnings
from types import CodeType
from typing import Any, Callable

from RestrictedPython import compile_restricted, limited_builtins, safe_builtins
from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence
from RestrictedPython.PrintCollector import PrintCollector

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


def guarded_getattr(obj: Any, name: str, default: Any = _NO_DEFAULT) -> Any:
    """``obj.name`` for public names. Unlike RestrictedPython's ``safer_getattr`` a missing name
    raises (it does not quietly become None), so a message nobody understands is an error."""
    if not isinstance(name, str) or name.startswith("_"):
        raise AttributeError(f"{name!r}: names beginning with '_' are not accessible")
    if isinstance(obj, str) and name == "format":
        raise NotImplementedError("str.format is not available; use an f-string")
    if default is _NO_DEFAULT:
        return getattr(obj, name)
    return getattr(obj, name, default)


def guarded_hasattr(obj: Any, name: str) -> bool:
    try:
        guarded_getattr(obj, name)
    except AttributeError:
        return False
    return True


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


def restricted_globals(writable: tuple[type, ...] = ()) -> dict[str, Any]:
    """A fresh global namespace for one restricted function. Writes are allowed to plain
    containers and to instances of ``writable`` (the capability proxies)."""
    allowed = (*PLAIN_WRITABLE, *writable)

    def write_guard(obj: Any) -> Any:
        if isinstance(obj, allowed):
            return obj
        raise TypeError(f"a method may not change a {type(obj).__name__}")

    builtins = {**safe_builtins, **limited_builtins, **MORE_BUILTINS,
                "getattr": guarded_getattr, "hasattr": guarded_hasattr}
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
        "_apply_": lambda fn, *args, **kwargs: fn(*args, **kwargs),
        "mark_changed_": lambda obj: None,  # the sandbox notices changed slots itself
    }


def compile_method(selector: str, source: str, filename: str,
                   writable: tuple[type, ...] = ()) -> Callable[..., Any]:
    """The function ``selector`` defined by ``source`` (runs the ``def``: sandbox workers only)."""
    namespace = restricted_globals(writable)
    exec(restricted_code(source, filename), namespace)
    return namespace[selector]
