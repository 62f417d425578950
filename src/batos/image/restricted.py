"""Turning a Method's source into a function with RestrictedPython.

Every stored method, whoever wrote it, is compiled here: attribute reads go through a guard that
refuses names beginning with ``_``, writes are allowed only to image objects and plain containers,
and the builtins are a small safe set. Two rewrites come first, because RestrictedPython refuses
them as written: the covenant line ``self._p_changed = True`` becomes ``mark_changed_(self)``, and
``self.x += 1`` / ``self.items[0] += 1`` become plain assignments.

RestrictedPython says of itself that it is not a sandbox on its own; it is one layer of several.
"""

from __future__ import annotations

import ast
import operator
import warnings
from typing import Any, Callable

from persistent.list import PersistentList
from persistent.mapping import PersistentMapping
from RestrictedPython import compile_restricted, limited_builtins, safe_builtins
from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence, safer_getattr
from RestrictedPython.PrintCollector import PrintCollector

WRITABLE = (list, dict, set, PersistentList, PersistentMapping)
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


def _write_guard(obj: Any) -> Any:
    from batos.image.objects import UvmObject

    if isinstance(obj, (UvmObject, *WRITABLE)):
        return obj
    raise TypeError(f"a method may not change a {type(obj).__name__}")


def _mark_changed(obj: Any) -> None:
    from batos.image.objects import UvmObject

    if isinstance(obj, UvmObject):
        obj._p_changed = True


def _inplacevar(op: str, x: Any, y: Any) -> Any:
    return INPLACE[op](x, y)


def restricted_globals() -> dict[str, Any]:
    """A fresh global namespace for one restricted function (the plain, lazy range: the time
    budget, not an element cap, bounds a loop)."""
    builtins = {**safe_builtins, **limited_builtins, **MORE_BUILTINS}
    for unwanted in ("setattr", "delattr", "__build_class__"):
        builtins.pop(unwanted, None)
    return {
        "__builtins__": builtins,
        "__name__": "batos.methods",
        "_getattr_": safer_getattr,
        "_getitem_": operator.getitem,
        "_getiter_": iter,
        "_write_": _write_guard,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_inplacevar_": _inplacevar,
        "_print_": PrintCollector,
        "_apply_": lambda fn, *args, **kwargs: fn(*args, **kwargs),
        "mark_changed_": _mark_changed,
    }


def compile_method(selector: str, source: str, filename: str) -> Callable[..., Any]:
    """The function ``selector`` defined by ``source``; SyntaxError says why RestrictedPython refused."""
    tree = ast.fix_missing_locations(_Prepare().visit(ast.parse(source, filename)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        code = compile_restricted(tree, filename, "exec")
    namespace = restricted_globals()
    exec(code, namespace)
    return namespace[selector]
