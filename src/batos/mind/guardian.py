"""The Guardian: a static audit of method source before it may be installed.

Three rules, each violation reported with its line so that it can be fed back to the model:

- **Shape**: the source is exactly one top-level function named like the selector, taking the
  receiver as its first parameter, and nothing else.
- **Persistence Covenant**: a method that changes the receiver's state (assigning or deleting
  ``self.<slot>`` anywhere: plain, multiple-target, tuple, augmented, annotated, inside any block)
  must end with ``self._p_changed = True``: as its last statement, or as the statement just before
  a final ``return``. :func:`repair_covenant` adds the line deterministically.
- **Safety**: no imports, ``global``/``nonlocal``, classes, generators or coroutines; none of the
  builtins that reach code, files or namespaces (``exec``, ``eval``, ``compile``, ``open``,
  ``__import__``, ``globals``, ``vars``, ``locals``...); ``getattr``/``setattr``/``delattr``/``hasattr``
  only called directly (never passed, aliased or kept) with a literal public name that is not an
  interpreter internal; no name or attribute beginning with ``_`` (except the covenant's
  ``self._p_changed`` and the throwaway name ``_``); no frame, code or generator internals; no
  format string that reaches into attributes or items; an ``except`` may name only built-in
  subclasses of ``Exception`` (by name, or a tuple of names), never bare, never ``BaseException``,
  ``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit`` or a computed expression; default
  arguments are literal constants (they are evaluated when the method is compiled). Lambdas and
  comprehensions are audited like any other code.

The audit takes time linear in the source, which is capped at MAX_SOURCE_BYTES before it is
parsed: a hostile source cannot make the Guardian itself slow.

The Guardian is one layer of several (RestrictedPython, subprocess verification, time budgets);
none of them is a security boundary alone.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import string

from RestrictedPython.transformer import INSPECT_ATTRIBUTES

COVENANT = "self._p_changed = True"
BANNED_CALLS = frozenset({
    "exec", "eval", "compile", "open", "__import__", "globals", "vars", "locals", "input",
    "breakpoint", "help", "exit", "quit", "memoryview", "classmethod", "staticmethod", "property",
    "super", "object", "type",
})
NAME_CALLS = frozenset({"getattr", "setattr", "delattr", "hasattr"})
INTERNAL_ATTRIBUTES = INSPECT_ATTRIBUTES | frozenset({
    "gi_frame", "gi_code", "gi_yieldfrom", "gi_running", "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code",
    "ag_await", "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "f_trace", "f_generator", "tb_frame",
    "tb_next", "co_code", "func_globals", "func_code", "mro", "format_map",
})
MAX_SOURCE_BYTES = 64 * 1024
CATCHABLE = frozenset(name for name, value in vars(builtins).items()
                      if isinstance(value, type) and issubclass(value, Exception))


class GuardianError(ValueError):
    """Source the Guardian refuses; the message says where and why."""


class CovenantViolationError(GuardianError):
    """The method changes state without ending in ``self._p_changed = True``."""


class SecurityViolation(GuardianError):
    """The method uses something the safety policy forbids."""


def _where(node: ast.AST) -> str:
    return f"line {getattr(node, 'lineno', '?')}"


def _is_covenant(node: ast.stmt) -> bool:
    return (isinstance(node, ast.Assign) and len(node.targets) == 1
            and _is_self_attribute(node.targets[0], "_p_changed")
            and isinstance(node.value, ast.Constant) and node.value.value is True)


def _is_self_attribute(node: ast.AST, name: str | None = None) -> bool:
    return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
            and (name is None or node.attr == name))


def _flatten_targets(target: ast.AST):
    if isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            yield from _flatten_targets(element)
    elif isinstance(target, ast.Starred):
        yield from _flatten_targets(target.value)
    else:
        yield target


def state_changes(function: ast.FunctionDef) -> list[ast.AST]:
    """Every statement that assigns or deletes a ``self.<slot>`` (the covenant line excluded)."""
    found = []
    for node in ast.walk(function):
        if isinstance(node, ast.Assign):
            targets = [t for target in node.targets for t in _flatten_targets(target)]
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = [t for target in node.targets for t in _flatten_targets(target)]
        else:
            continue
        if any(_is_self_attribute(t) and t.attr != "_p_changed" for t in targets):
            found.append(node)
    return found


def _ends_with_covenant(body: list[ast.stmt]) -> bool:
    if body and _is_covenant(body[-1]):
        return True
    return len(body) >= 2 and isinstance(body[-1], ast.Return) and _is_covenant(body[-2])


def the_function(source: str, selector: str, max_bytes: int = MAX_SOURCE_BYTES) -> ast.FunctionDef:
    """Parse ``source`` and return its one function; GuardianError when the shape is wrong."""
    if len(source) > max_bytes or len(source.encode("utf-8", "replace")) > max_bytes:
        raise GuardianError(f"the source is over {max_bytes} bytes; a method must be shorter")
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise GuardianError(f"line {exc.lineno}: the source does not parse: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise GuardianError("the source is nested too deeply to audit") from None
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    if len(tree.body) != 1 or len(functions) != 1:
        raise GuardianError(f"the source must be exactly one top-level 'def {selector}(self, ...)' and nothing else")
    function = functions[0]
    if function.name != selector:
        raise GuardianError(f"line {function.lineno}: the function is named {function.name!r}; it must be {selector!r}")
    params = function.args.posonlyargs + function.args.args
    if not params or params[0].arg != "self":
        raise GuardianError(f"line {function.lineno}: the first parameter must be 'self' (the receiver)")
    if function.decorator_list:
        raise SecurityViolation(f"{_where(function.decorator_list[0])}: decorators are not allowed")
    return function


def check_covenant(function: ast.FunctionDef) -> None:
    changes = state_changes(function)
    if changes and not _ends_with_covenant(function.body):
        first = changes[0]
        raise CovenantViolationError(
            f"{_where(first)}: the method changes self's slots, so its last statement (or the one "
            f"just before the final return) must be `{COVENANT}`")


def check_safety(function: ast.FunctionDef) -> None:
    called = {id(node.func) for node in ast.walk(function) if isinstance(node, ast.Call)}
    for node in ast.walk(function):
        problem = _unsafe(node, function, called)
        if problem:
            raise SecurityViolation(f"{_where(node)}: {problem}")


def _unsafe(node: ast.AST, function: ast.FunctionDef, called: set[int]) -> str | None:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return "imports are not allowed; the method gets what it needs through self and its arguments"
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        return f"'{type(node).__name__.lower()}' is not allowed"
    if isinstance(node, (ast.ClassDef, ast.AsyncFunctionDef, ast.Await, ast.Yield, ast.YieldFrom)):
        return f"{type(node).__name__} is not allowed in a method"
    if isinstance(node, ast.FunctionDef) and node is not function:
        return "nested function definitions are not allowed (use a lambda or a loop)"
    if isinstance(node, ast.ExceptHandler):
        return _uncatchable(node)
    if isinstance(node, (ast.FunctionDef, ast.Lambda)):
        defaults = [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]
        if not all(_is_literal(d) for d in defaults):
            return "default arguments must be literal constants (numbers, strings, None, True, False)"
    if isinstance(node, ast.Name):
        if node.id in BANNED_CALLS:
            return f"'{node.id}' is not allowed"
        if node.id in NAME_CALLS and id(node) not in called:
            return f"'{node.id}' may only be called directly, with a literal name; it may not be passed or kept"
        if node.id.startswith("_") and node.id != "_":
            return f"the name {node.id!r} begins with '_'; such names are not allowed"
    if isinstance(node, ast.Attribute):
        if node.attr == "_p_changed" and _is_self_attribute(node):
            return None if isinstance(node.ctx, ast.Store) else "self._p_changed may only be assigned"
        if node.attr.startswith("_"):
            return f"the attribute {node.attr!r} begins with '_'; such attributes are not allowed"
        if node.attr in INTERNAL_ATTRIBUTES:
            return f"the attribute {node.attr!r} reaches interpreter internals and is not allowed"
        if node.attr == "format" and not isinstance(node.value, ast.Constant):
            return "str.format on a computed template is not allowed; use an f-string"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in NAME_CALLS:
        name = node.args[1] if len(node.args) > 1 else None
        if not (isinstance(name, ast.Constant) and isinstance(name.value, str) and not name.value.startswith("_")):
            return f"{node.func.id}() needs a literal attribute name that does not begin with '_'"
        if name.value in INTERNAL_ATTRIBUTES or name.value == "format":
            return f"{node.func.id}() of {name.value!r} reaches interpreter internals or templates and is not allowed"
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and "__" in node.value:
        return "string constants containing '__' are not allowed"
    if (isinstance(node, ast.Attribute) and node.attr in ("format", "format_map")
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            and _template_reaches(node.value.value)):
        return "a format template may not reach into attributes or items ({x.attr}, {x[0]})"
    return None


def _uncatchable(handler: ast.ExceptHandler) -> str | None:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    for name in names:
        if name is None:
            return "a bare 'except:' would catch the signals that stop a method; name the exceptions (e.g. except Exception)"
        if not isinstance(name, ast.Name):
            return "an 'except' must name built-in exceptions directly (e.g. except (KeyError, ValueError))"
        if name.id not in CATCHABLE:
            return f"'except {name.id}' is not allowed: name built-in subclasses of Exception only (e.g. except Exception)"
    return None


def _is_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    if isinstance(node, ast.Tuple):
        return all(_is_literal(e) for e in node.elts)
    return isinstance(node, ast.Constant)


def _template_reaches(template: str) -> bool:
    """True when a format template has a field like ``{x.attr}`` or ``{x[0]}`` (linear time)."""
    try:
        fields = [field for _, field, spec, _ in string.Formatter().parse(template) if field is not None]
    except ValueError:
        return True  # a template that does not parse is refused rather than guessed at
    return any("." in field or "[" in field for field in fields)


def audit(source: str, selector: str, max_bytes: int = MAX_SOURCE_BYTES) -> ast.FunctionDef:
    """Check shape, safety and covenant (in that order); return the function's ast."""
    function = the_function(source, selector, max_bytes)
    check_safety(function)
    check_covenant(function)
    return function


def repair_covenant(source: str, selector: str) -> str | None:
    """``source`` with the covenant line added where it belongs, or None if it cannot help.

    Only the covenant is repaired; shape and safety problems stay the model's to fix.
    """
    function = the_function(source, selector)
    if not state_changes(function) or _ends_with_covenant(function.body):
        return None
    lines = source.splitlines()
    last = function.body[-1]
    indent = " " * last.col_offset
    if isinstance(last, ast.Return):
        lines.insert(last.lineno - 1, indent + COVENANT)
    else:
        lines.insert(last.end_lineno, indent + COVENANT)
    return "\n".join(lines) + "\n"


def self_reads(function: ast.FunctionDef) -> set[str]:
    """The names read as ``self.<name>`` (slots or methods) anywhere in ``function``."""
    return {node.attr for node in ast.walk(function)
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load)
            and isinstance(node.value, ast.Name) and node.value.id == "self"}


MAX_SLIPS = 8  # more unknown names than this in one method is not a slip of a few names


def repair_slot_names(source: str, selector: str, known: set[str]) -> tuple[str, dict[str, str]] | None:
    """``source`` with each ``self.<name>`` that names nothing known, but is one small slip away
    from exactly one known name (``self.score`` where the slot is ``scores``), renamed to it; and
    what was renamed. None when there is nothing to repair. Names the method assigns itself count
    as known."""
    function = the_function(source, selector)
    assigned = {node.attr for node in ast.walk(function)
                if isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del))}
    targets = sorted(name for name in known if isinstance(name, str) and name.isidentifier() and not name.startswith("_"))
    unknowns = sorted(self_reads(function) - set(targets) - assigned - {"_p_changed"})
    if len(unknowns) > MAX_SLIPS:
        return None  # not a slip: a method written against another object
    renames = {}
    for unknown in unknowns:
        near = [name for name in targets if abs(len(name) - len(unknown)) <= 3]
        close = difflib.get_close_matches(unknown, near, n=2, cutoff=0.75)
        if len(close) == 1 or (len(close) == 2 and _closer(unknown, close[0], close[1])):
            renames[unknown] = close[0]
    if not renames:
        return None

    class Rename(ast.NodeTransformer):
        def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
            self.generic_visit(node)
            if isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in renames:
                node.attr = renames[node.attr]
            return node

    try:
        tree = ast.Module(body=[Rename().visit(function)], type_ignores=[])
        return ast.unparse(tree) + "\n", renames
    except RecursionError:  # an expression nested too deep to rewrite: left to the model
        return None


def _closer(name: str, first: str, second: str) -> bool:
    ratio = lambda other: difflib.SequenceMatcher(None, name, other).ratio()  # noqa: E731
    return ratio(first) - ratio(second) >= 0.1


def only_raises(function: ast.FunctionDef) -> bool:
    """Whether the function does nothing but raise (a docstring aside): it computes no answer."""
    body = [s for s in function.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    return bool(body) and all(isinstance(s, (ast.Raise, ast.Pass)) for s in body) and any(
        isinstance(s, ast.Raise) for s in body)


def echoes(function: ast.FunctionDef, feedback: list[str], least: int = 24) -> bool:
    """Whether a string in the function repeats ``least`` or more characters of the feedback
    it was given (a model that pastes its verdict back instead of fixing the code)."""
    texts = [node.value for node in ast.walk(function) if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    texts += ["".join(part.value for part in node.values if isinstance(part, ast.Constant) and isinstance(part.value, str))
              for node in ast.walk(function) if isinstance(node, ast.JoinedStr)]
    for text in (t for t in texts if len(t) >= least):
        for said in feedback:
            if any(text[i:i + least] in said for i in range(0, len(text) - least + 1, 4)):
                return True
    return False
