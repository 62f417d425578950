"""The Guardian's corpus: what it accepts, what it refuses and why, and its covenant repair."""

from __future__ import annotations

import pytest

from batos.mind.guardian import (
    CovenantViolationError, GuardianError, SecurityViolation, audit, repair_covenant,
)

ACCEPTED = {
    "read only": "def f(self):\n    return self.name\n",
    "assign then covenant then return": "def f(self, n):\n    self.total = self.total + n\n    self._p_changed = True\n    return self.total\n",
    "covenant as last statement": "def f(self):\n    self.x = 1\n    self._p_changed = True\n",
    "augmented assign": "def f(self, n):\n    self.total += n\n    self._p_changed = True\n    return self.total\n",
    "annotated assign": "def f(self):\n    self.x: int = 3\n    self._p_changed = True\n",
    "tuple target": "def f(self):\n    self.a, self.b = 1, 2\n    self._p_changed = True\n",
    "nested in loop and if": "def f(self, xs):\n    for x in xs:\n        if x:\n            self.last = x\n    self._p_changed = True\n    return self.last\n",
    "local variables only": "def f(self, xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total\n",
    "in-place edit of a persistent list": "def f(self, x):\n    self.items.append(x)\n    return len(self.items)\n",
    "f-string": "def f(self):\n    return f'{self.name} has {len(self.items)} items'\n",
    "comprehension and lambda": "def f(self, xs):\n    key = lambda x: -x\n    return sorted([x * 2 for x in xs], key=key)\n",
    "throwaway underscore": "def f(self, n):\n    return [0 for _ in range(n)]\n",
    "except Exception": "def f(self):\n    try:\n        return 1 / 0\n    except ZeroDivisionError:\n        return None\n",
    "getattr with literal": "def f(self):\n    return getattr(self, 'name', None)\n",
    "format on a literal with plain fields": "def f(self):\n    return '{} and {}'.format(self.a, self.b)\n",
    "calls another method": "def f(self):\n    return self.describe()\n",
    "keyword arguments": "def f(self, a, b=2, *rest, **options):\n    return [a, b, list(rest), options]\n",
    "early return before write": "def f(self, x):\n    if x is None:\n        return None\n    self.x = x\n    self._p_changed = True\n    return x\n",
}

REFUSED = {
    # shape
    "two functions": ("def f(self):\n    return 1\ndef g(self):\n    return 2\n", GuardianError),
    "wrong name": ("def g(self):\n    return 1\n", GuardianError),
    "no self": ("def f():\n    return 1\n", GuardianError),
    "first param not self": ("def f(this):\n    return 1\n", GuardianError),
    "module statement": ("x = 1\ndef f(self):\n    return x\n", GuardianError),
    "syntax error": ("def f(self):\n    return (\n", GuardianError),
    "class instead": ("class f:\n    pass\n", GuardianError),
    "decorated": ("@staticmethod\ndef f(self):\n    return 1\n", SecurityViolation),
    # covenant
    "assign without covenant": ("def f(self):\n    self.x = 1\n    return 1\n", CovenantViolationError),
    "multi-target assign": ("def f(self):\n    a = self.x = 1\n    return a\n", CovenantViolationError),
    "tuple target without covenant": ("def f(self):\n    self.a, self.b = 1, 2\n", CovenantViolationError),
    "starred target": ("def f(self, xs):\n    first, *self.rest = xs\n    return first\n", CovenantViolationError),
    "augassign without covenant": ("def f(self):\n    self.total += 1\n    return self.total\n", CovenantViolationError),
    "annassign without covenant": ("def f(self):\n    self.x: int = 3\n", CovenantViolationError),
    "nested block without covenant": ("def f(self, xs):\n    for x in xs:\n        while x:\n            if x > 1:\n                self.seen = x\n            x -= 1\n    return 1\n", CovenantViolationError),
    "covenant not last": ("def f(self):\n    self.x = 1\n    self._p_changed = True\n    y = 2\n    return y\n", CovenantViolationError),
    "delete a slot without covenant": ("def f(self):\n    del self.x\n", CovenantViolationError),
    "covenant with false": ("def f(self):\n    self.x = 1\n    self._p_changed = False\n", CovenantViolationError),
    "write in try block": ("def f(self):\n    try:\n        self.x = 1\n    except Exception:\n        pass\n    return 0\n", CovenantViolationError),
    # safety
    "import": ("def f(self):\n    import os\n    return os.getcwd()\n", SecurityViolation),
    "from import": ("def f(self):\n    from os import path\n    return path\n", SecurityViolation),
    "exec": ("def f(self):\n    exec('x = 1')\n", SecurityViolation),
    "eval": ("def f(self, s):\n    return eval(s)\n", SecurityViolation),
    "compile": ("def f(self, s):\n    return compile(s, 'x', 'exec')\n", SecurityViolation),
    "open": ("def f(self):\n    return open('/etc/passwd').read()\n", SecurityViolation),
    "dunder import": ("def f(self):\n    return __import__('os')\n", SecurityViolation),
    "globals": ("def f(self):\n    return globals()\n", SecurityViolation),
    "vars": ("def f(self):\n    return vars(self)\n", SecurityViolation),
    "getattr computed": ("def f(self, name):\n    return getattr(self, name)\n", SecurityViolation),
    "getattr dunder literal": ("def f(self):\n    return getattr(self, '__class__')\n", SecurityViolation),
    "setattr computed": ("def f(self, name):\n    setattr(self, name, 1)\n    self._p_changed = True\n", SecurityViolation),
    "dunder attribute": ("def f(self):\n    return self.__class__\n", SecurityViolation),
    "subclasses escape": ("def f(self):\n    return ().__class__.__bases__[0].__subclasses__()\n", SecurityViolation),
    "private attribute": ("def f(self):\n    return self._slots\n", SecurityViolation),
    "private name": ("def f(self):\n    _x = 1\n    return _x\n", SecurityViolation),
    "read _p_changed": ("def f(self):\n    return self._p_changed\n", SecurityViolation),
    "global": ("def f(self):\n    global counter\n    counter = 1\n", SecurityViolation),
    "nonlocal in lambda-free nested def": ("def f(self):\n    def g():\n        return 1\n    return g()\n", SecurityViolation),
    "generator frame": ("def f(self):\n    g = (x for x in [1])\n    return g.gi_frame.f_globals\n", SecurityViolation),
    "yield": ("def f(self):\n    yield 1\n", SecurityViolation),
    "format string reach": ("def f(self):\n    return '{0.name}'.format(self)\n", SecurityViolation),
    "format string index": ("def f(self):\n    return '{0[0]}'.format(self.items)\n", SecurityViolation),
    "computed format template": ("def f(self, t):\n    return t.format(self)\n", SecurityViolation),
    "dunder in string": ("def f(self):\n    return getattr(self, 'x') or '__class__'\n", SecurityViolation),
    "lambda smuggling eval": ("def f(self, s):\n    run = lambda t: eval(t)\n    return run(s)\n", SecurityViolation),
    "lambda smuggling dunder": ("def f(self):\n    peek = lambda o: o.__dict__\n    return peek(self)\n", SecurityViolation),
    "bare except": ("def f(self):\n    try:\n        return 1\n    except:\n        return 2\n", SecurityViolation),
    "except BaseException": ("def f(self):\n    try:\n        return 1\n    except BaseException:\n        return 2\n", SecurityViolation),
    "type builtin": ("def f(self):\n    return type('X', (), {})\n", SecurityViolation),
    "async": ("async def f(self):\n    return 1\n", GuardianError),
    "getattr of a frame attribute by a literal name": ("def f(self):\n    g = (x for x in [1])\n    return getattr(g, 'gi_frame')\n", SecurityViolation),
    "getattr aliased": ("def f(self, name):\n    g = getattr\n    return g(self, name)\n", SecurityViolation),
    "getattr passed to map": ("def f(self, xs):\n    return list(map(getattr, xs, ['gi' + '_frame']))\n", SecurityViolation),
    "hasattr kept in a list": ("def f(self):\n    checks = [hasattr]\n    return checks[0](self, 'x')\n", SecurityViolation),
    "format taken from str by getattr": ("def f(self, t):\n    return getattr(str, 'format')(t, self)\n", SecurityViolation),
    "builtins via comprehension": ("def f(self):\n    return [b for b in __builtins__]\n", SecurityViolation),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_accepted(case):
    audit(ACCEPTED[case], "f")


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_with_a_precise_message(case):
    source, kind = REFUSED[case]
    with pytest.raises(kind) as caught:
        audit(source, "f")
    message = str(caught.value)
    assert message and ("line" in message or "exactly one" in message), message


def test_corpus_is_large_enough():
    assert len(ACCEPTED) + len(REFUSED) >= 40
    assert sum(1 for _, kind in REFUSED.values() if kind is CovenantViolationError) >= 8


@pytest.mark.parametrize("source", [
    "def f(self, n):\n    self.total = self.total + n\n    return self.total\n",
    "def f(self):\n    self.a, self.b = 1, 2\n",
    "def f(self, xs):\n    for x in xs:\n        self.last = x\n",
])
def test_covenant_repair_makes_the_source_pass(source):
    with pytest.raises(CovenantViolationError):
        audit(source, "f")
    repaired = repair_covenant(source, "f")
    audit(repaired, "f")
    assert repaired.count("self._p_changed = True") == 1


def test_repair_leaves_alone_what_it_cannot_or_need_not_fix():
    assert repair_covenant("def f(self):\n    return 1\n", "f") is None
    assert repair_covenant(ACCEPTED["assign then covenant then return"], "f") is None
    with pytest.raises(GuardianError):
        repair_covenant("def g(self):\n    self.x = 1\n", "f")
