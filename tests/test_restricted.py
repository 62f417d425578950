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


# --- the run-time guard decides by type, whatever the audit let through ---------------------------

INTERNALS = ("gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "ag_frame", "f_back", "f_globals",
             "f_locals", "f_builtins", "f_code", "tb_frame", "tb_next", "co_code", "co_filename", "mro")
HOLDERS = {
    "a generator": "(x for x in [1])",
    "a caught exception's value": "ValueError('x')",
    "a lambda": "lambda: 1",
    "a builtin function": "sorted",
    "a type": "int",
    "an iterator": "iter([1])",
}


@pytest.mark.parametrize("holder", sorted(HOLDERS))
def test_no_introspection_attribute_is_readable_by_getattr_or_hasattr(holder):
    made = HOLDERS[holder]
    for name in INTERNALS:
        with pytest.raises(MethodError, match="not accessible"):
            run(f"def peek(self, name):\n    return getattr({made}, name)\n", None, name)
        result, _ = run(f"def peek(self, name):\n    return [hasattr({made}, name), getattr({made}, name, 'none')]\n", None, name)
        assert result == [False, "none"], (holder, name)


@pytest.mark.parametrize("source", [
    "def peek(self, t):\n    return getattr(str, 'format')(t, self)\n",
    "def peek(self, t):\n    return getattr(t, 'format')(self)\n",
    "def peek(self, t):\n    return getattr(t, 'format' + '_map')({'x': self})\n",
    "def peek(self, t):\n    return getattr(str, 'format' + '_map')(t, {'x': self})\n",
])
def test_format_and_format_map_are_refused_on_strings_and_on_str(source):
    with pytest.raises(MethodError, match="not accessible"):
        run(source, None, "{x.__class__.__mro__}")


@pytest.mark.parametrize("spelling", ["getattr", "g", "map"])
def test_the_frame_escape_is_refused_at_run_time_in_every_spelling(spelling):
    """The second review's escape, run without the Guardian in front of it."""
    fetch = {"getattr": "getattr(getattr(box[0], 'gi_frame'), 'f_back')",
             "g": "g(g(box[0], 'gi_frame'), 'f_back')",
             "map": "list(map(getattr, [list(map(getattr, box, ['gi_frame']))[0]], ['f_back']))[0]"}[spelling]
    source = (f"def escape(self):\n    g = getattr\n    box = []\n    gen = ({fetch} for x in [1])\n    box.append(gen)\n"
              "    return getattr(getattr(next(gen), 'f_back'), 'f_globals')['os'].getuid()\n")
    with pytest.raises(MethodError, match="'gi_frame' of a generator is not accessible"):
        run(source)


def test_plain_data_keeps_its_public_methods():
    source = ("def ok(self, words):\n    text = ' '.join(words).upper()\n    d = dict.fromkeys(words, 0)\n"
              "    return [text.split(), sorted(d.keys()), (7).bit_length(), getattr([], 'count')(1),\n"
              "            str.join('-', words), hasattr('x', 'upper'), hasattr('x', 'format'), self.total]\n")
    result, _ = run(source, None, ["a", "b"])
    assert result == [["A", "B"], ["a", "b"], 3, 0, "a-b", True, False, 1]


def test_a_method_that_rebinds_a_global_changes_no_other_method_of_its_call():
    """Methods of one call share a worker's prepared builtins; each still has a namespace of its
    own, so a rebinding in one is not what another method of that call finds."""
    from batos.image.objects import Method

    receiver = UvmObject(total=1)
    receiver._slots["ordered"] = Method("ordered", "def ordered(self):\n    return sorted([3, 1, 2])\n")
    hijack = ("def hijack(self):\n    global sorted\n    sorted = lambda values: 'hijacked'\n"
              "    return [sorted([2, 1]), self.ordered()]\n")
    result, _ = run(hijack, receiver)
    assert result == ["hijacked", [1, 2, 3]]
