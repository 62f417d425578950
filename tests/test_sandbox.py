"""The verifier: examples checked in a confined sandbox worker."""

from __future__ import annotations

from batos.sandbox.verify import verify

ADD = "def add_to_total(self, n):\n    self.total = self.total + n\n    self._p_changed = True\n    return self.total\n"


def test_passing_and_failing_examples():
    good = verify(ADD, "add_to_total", {"total": 10}, [{"args": [5], "result": 15, "after": {"total": 15}}])
    assert good.ok, good.message
    wrong = verify(ADD, "add_to_total", {"total": 10}, [{"args": [5], "result": 16}])
    assert not wrong.ok and "expected 16" in wrong.message
    after = verify(ADD, "add_to_total", {"total": 10}, [{"args": [5], "after": {"total": 0}}])
    assert not after.ok and "slot 'total'" in after.message
    per_example_slots = verify(ADD, "add_to_total", {"total": 10}, [{"slots": {"total": 1}, "args": [1], "result": 2}])
    assert per_example_slots.ok


def test_exceptions_endless_loops_and_memory_hogs_are_contained():
    boom = verify("def f(self):\n    return 1 / 0\n", "f", {}, [])
    assert not boom.ok and "ZeroDivisionError" in boom.message and "line 2" in boom.message
    spin = verify("def f(self):\n    while True:\n        pass\n", "f", {}, [], seconds=3)
    assert not spin.ok and "wall-clock" in spin.message
    hog = verify("def f(self):\n    return len(bytearray(4 * 1024 * 1024 * 1024))\n", "f", {}, [])
    assert not hog.ok and "MemoryError" in hog.message


def test_restricted_python_applies_in_the_child():
    refused = verify("def f(self):\n    return self.__class__\n", "f", {}, [])
    assert not refused.ok and "RestrictedPython" in refused.message


def test_the_child_cannot_write_files(tmp_path):
    target = tmp_path / "written"
    verdict = verify(f"def f(self):\n    return open({str(target)!r}, 'w')\n", "f", {}, [])
    assert not verdict.ok and not target.exists()


CONFINED = """
import json, os, socket, sys
from batos.sandbox.confine import confine, load_libseccomp, seal_call
lib = load_libseccomp()
applied, missing = confine(512 * 1024 * 1024, 60, 16, lib=lib)
outcomes = {"applied": applied, "sealed": seal_call(lib)}
for name, attempt in (("read", lambda: open(sys.argv[1]).read()),
                      ("write", lambda: open(sys.argv[2], "w").write("planted")),
                      ("socket", lambda: socket.socket()),
                      ("fork", lambda: os.fork()),
                      ("exec", lambda: os.execv("/bin/true", ["true"]))):
    try:
        attempt()
        outcomes[name] = "allowed"
    except OSError as exc:
        outcomes[name] = type(exc).__name__
sys.stdout.write(json.dumps(outcomes))
"""


def test_a_confined_process_cannot_read_write_connect_fork_or_exec(tmp_path):
    """The sandbox worker's confinement on its own, at the level of system calls."""
    import json
    import subprocess
    import sys

    secret = tmp_path / "secret"
    secret.write_text("secret")
    plant = tmp_path / "plant.py"
    done = subprocess.run([sys.executable, "-I", "-c", CONFINED, str(secret), str(plant)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    outcomes = json.loads(done.stdout)
    assert {"rlimits", "landlock", "seccomp"} <= set(outcomes["applied"])  # this machine's kernel has both
    assert outcomes["sealed"] is None
    assert all(outcomes[name] != "allowed" for name in ("read", "write", "socket", "fork", "exec")), outcomes
    assert not plant.exists()
