"""Stored methods run under RestrictedPython inside a sandbox worker: the guards hold at run
time, not only in the audit."""

from __future__ import annotations

import pytest

from batos.image import UvmObject
from batos.sandbox import MethodError, run_method
from batos.sandbox.verify import default_pool


def run(source: str, receiver=None, *args):
    receiver = receiver if receiver is not None else UvmObject(total=1, items=[1, 2])
    selector = source.split("(")[0].split()[-1]
    return run_method(default_pool(), selector, source, receiver, list(args), {}, 10.0), receiver


def test_covenant_line_and_augmented_assignment_work():
    result, obj = run("def add(self, n):\n    self.total += n\n    self.items[0] += n\n    self._p_changed = True\n    return self.total\n", None, 4)
    assert result == 5 and obj.total == 5 and list(obj.items) == [5, 2]


def test_private_attributes_are_refused_at_run_time():
    obj = UvmObject()
    with pytest.raises(MethodError, match="_slots"):  # a computed name slips past a static audit, not the guard
        run("def peek(self, name):\n    return getattr(self, name)\n", obj, "_slots")


def test_a_missing_attribute_is_an_error_not_none():
    with pytest.raises(MethodError, match="does not understand 'nothing'"):
        run("def peek(self):\n    return self.nothing\n")


def test_writes_to_values_that_are_not_containers_or_objects_are_refused():
    with pytest.raises(MethodError, match="may not change"):
        run("def poke(self):\n    'text'.value = 1\n    return 1\n")


def test_dangerous_builtins_are_absent():
    for name in ("open", "exec", "eval", "__import__", "setattr", "compile"):
        with pytest.raises(MethodError):
            run(f"def f(self):\n    return {name}\n")


def test_ordinary_python_still_works():
    source = ("def summary(self, words):\n    counts = {}\n    for w in words:\n        counts[w] = counts.get(w, 0) + 1\n"
              "    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))\n"
              "    return [f'{w}={n}' for w, n in ranked][:2] + [sum(range(10_000))]\n")
    result, _ = run(source, None, ["a", "b", "a", "c", "b", "a"])
    assert result == ["a=3", "b=2", 49995000]
