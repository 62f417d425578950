"""Containment below RestrictedPython: what code that got out of it can do in a sandbox worker.

The worker is assumed escaped (``tests/escape/escaped_child.py`` is the real worker with the
compiler replaced by plain ``exec``), and the process it lands in must be worth nothing: no
system call reaches another process or the file system, nothing survives into the next call, a
forged or stale frame is never taken for another call's answer.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batos.image import UvmObject
from batos.sandbox import MethodError, run_method
from batos.sandbox.pool import SandboxPool

ESCAPED = Path(__file__).parent / "escape" / "escaped_child.py"

# Each probe makes one system call named by the second review against ``pid`` (the UVM's stand-in)
# or ``path`` (a file of the UVM's) and reports the errno it got (0: it was allowed).
PROBE = r'''
def probe(self, pid, path):
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    rlimit = (ctypes.c_uint64 * 2)(1, 1)
    mask = (ctypes.c_uint64 * 16)(1)
    param = (ctypes.c_int * 1)(0)
    timeval = (ctypes.c_long * 2)(0, 0)
    name = path.encode()
    attempts = {
        "prlimit64 RLIMIT_CPU": lambda: libc.prlimit(pid, 0, rlimit, None),
        "prlimit64 RLIMIT_NOFILE": lambda: libc.prlimit(pid, 7, rlimit, None),
        "setpriority": lambda: libc.setpriority(0, pid, 19),
        "sched_setaffinity": lambda: libc.sched_setaffinity(pid, 128, mask),
        "sched_setscheduler": lambda: libc.sched_setscheduler(pid, 5, param),
        "settimeofday": lambda: libc.settimeofday(timeval, None),
        "syslog": lambda: libc.klogctl(10, None, 0),
        "reboot": lambda: libc.syscall(169, 0, 0, 0, 0),
        "pidfd_open": lambda: libc.syscall(434, pid, 0),
        "kill": lambda: libc.kill(pid, 0),
        "ptrace": lambda: libc.ptrace(16, pid, None, None),
        "unshare": lambda: libc.unshare(0x40000000),
        "chmod": lambda: libc.chmod(name, 0o777),
        "chown": lambda: libc.chown(name, 65534, 65534),
        "utime": lambda: libc.utimes(name, None),
        "setxattr": lambda: libc.setxattr(name, b"user.planted", b"x", 1, 0),
        "open": lambda: libc.open(name, 0),
        "fork": lambda: libc.syscall(57),
        "socket": lambda: libc.socket(2, 1, 0),
        "prctl PR_SET_DUMPABLE": lambda: libc.prctl(4, 1, 0, 0, 0),
    }
    outcomes = {}
    for what, attempt in attempts.items():
        ctypes.set_errno(0)
        outcomes[what] = 0 if attempt() >= 0 else ctypes.get_errno()
    return outcomes
'''

STANDALONE = """
import json, os, sys
from batos.sandbox.confine import confine, load_libseccomp, seal_call
lib = load_libseccomp()
applied, missing = confine(512 * 1024 * 1024, 60, 16, uid=int(sys.argv[3]), lib=lib)
seal_call(lib)
namespace = {}
exec(sys.argv[4], namespace)
outcomes = namespace["probe"](None, int(sys.argv[1]), sys.argv[2])
os.write(1, json.dumps({"applied": applied, "missing": missing, "outcomes": outcomes}).encode())
"""


@pytest.fixture(scope="module")
def escaped_pool():
    pool = SandboxPool(2, argv=(str(ESCAPED),))
    pool.start()
    yield pool
    pool.close()


def run(pool: SandboxPool, source: str, receiver=None, *args, budget: float = 10.0):
    receiver = receiver if receiver is not None else UvmObject(total=1)
    selector = source.split("(")[0].split()[-1]
    return run_method(pool, selector, source, receiver, list(args), {}, budget)


def assert_every_probe_refused(outcomes: dict[str, int]) -> None:
    allowed = {what: os.strerror(code) if code else "allowed" for what, code in outcomes.items() if code != errno.EPERM}
    assert not allowed, f"not refused with EPERM: {allowed}"


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid step needs a UVM that runs as root")
@pytest.mark.parametrize("uid", ["sandbox", "the UVM's own"])
def test_a_confined_process_gets_eperm_for_every_call_the_review_made(tmp_path, uid):
    """The confinement on its own, as the worker applies it; with the UVM's own uid too, so the
    seccomp allow-list is shown to hold without the uid change behind it."""
    secret = tmp_path / "secret"
    secret.write_text("secret")
    before = resource.getrlimit(resource.RLIMIT_CPU), resource.getrlimit(resource.RLIMIT_NOFILE), os.getpriority(os.PRIO_PROCESS, 0)
    stat_before = secret.stat()
    done = subprocess.run([sys.executable, "-I", "-c", STANDALONE, str(os.getpid()), str(secret),
                           str(65534 if uid == "sandbox" else os.getuid()), PROBE],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    report = json.loads(done.stdout)
    assert {"capabilities", "no_new_privs", "landlock", "seccomp"} <= set(report["applied"]), report["missing"]
    assert_every_probe_refused(report["outcomes"])
    after = resource.getrlimit(resource.RLIMIT_CPU), resource.getrlimit(resource.RLIMIT_NOFILE), os.getpriority(os.PRIO_PROCESS, 0)
    assert after == before
    assert secret.stat().st_mode == stat_before.st_mode and secret.stat().st_uid == stat_before.st_uid


def test_workers_say_what_the_kernel_says_of_them(escaped_pool):
    run(escaped_pool, "def one(self):\n    return 1\n")
    status = escaped_pool.confinement["status"]
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert all(int(status[name], 16) == 0 for name in ("CapPrm", "CapEff", "CapAmb"))
    if os.geteuid() == 0:
        assert int(status["CapBnd"], 16) == 0
        assert set(status["Uid"].split()) == {"65534"} and set(status["Gid"].split()) == {"65534"}
        assert "uid" in escaped_pool.confinement["applied"]


def test_escaped_code_in_a_worker_reaches_no_other_process(escaped_pool, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("secret")
    before = resource.getrlimit(resource.RLIMIT_CPU), os.getpriority(os.PRIO_PROCESS, 0)
    outcomes = run(escaped_pool, PROBE, None, os.getpid(), str(secret))
    assert_every_probe_refused(outcomes)
    assert (resource.getrlimit(resource.RLIMIT_CPU), os.getpriority(os.PRIO_PROCESS, 0)) == before
    assert secret.read_text() == "secret"


def test_every_call_is_a_process_of_its_own(escaped_pool):
    pids = [run(escaped_pool, "def pid(self):\n    return [os.getpid(), os.getppid()]\n") for _ in range(6)]
    assert len({pid for pid, _ in pids}) == 6
    zygotes = {zygote for _, zygote in pids}
    assert len(zygotes) <= 2 and not zygotes & {pid for pid, _ in pids}


IMPLANT = '''
def implant(self):
    kept = child.KEPT = []
    real_run = child.Worker.run
    def spying(worker, job):
        kept.append(job)
        return real_run(worker, job)
    child.Worker.run = spying
    child.load_method = lambda *a, **k: (lambda receiver, *args: "hijacked")
    return "implanted"
'''


def test_an_implant_does_not_see_or_change_the_next_call(escaped_pool):
    assert run(escaped_pool, IMPLANT) == "implanted"
    victim = UvmObject(api_key="sk-victim", total=41)
    for _ in range(4):  # whichever worker the next calls land on
        assert run(escaped_pool, "def add(self, n):\n    self.total = self.total + n\n    return self.total\n", victim, 1) in (42, 43, 44, 45)
    assert victim.total == 45
    assert run(escaped_pool, "def kept(self):\n    return getattr(child, 'KEPT', 'nothing kept')\n") == "nothing kept"


FORGER = '''
def forge(self):
    worker = sys._getframe(1).f_locals["self"]
    worker.channel.send({"t": "done", "n": worker.nonce, "ok": True, "v": "forged", "writes": [[0, "owned", 1, False]]})
    self.total = 1000
    return "real"
'''


def test_a_forged_final_frame_answers_only_its_own_call_and_the_real_one_is_never_taken(escaped_pool):
    attacker = UvmObject(total=1)
    assert run(escaped_pool, FORGER, attacker) == "forged"  # the attacker can fool only itself
    assert attacker.owned == 1 and attacker.total == 1
    victims = [UvmObject(total=n) for n in range(4)]
    for victim in victims:
        assert run(escaped_pool, "def double(self):\n    self.total = self.total * 2\n    return self.total\n", victim) == victim.total
    assert [v.total for v in victims] == [0, 2, 4, 6]
    assert all("owned" not in v._slots for v in victims)


def test_a_frame_without_the_calls_nonce_kills_the_worker(escaped_pool):
    stale = ('def stale(self):\n    worker = sys._getframe(1).f_locals["self"]\n'
             '    worker.channel.send({"t": "done", "n": "0" * 32, "ok": True, "v": "stale", "writes": []})\n'
             '    return "real"\n')
    replaced = escaped_pool.replaced
    with pytest.raises(MethodError, match="does not answer the current call"):
        run(escaped_pool, stale)
    assert escaped_pool.replaced == replaced + 1
    assert run(escaped_pool, "def one(self):\n    return 1\n") == 1


LINGER = '''
def linger(self):
    worker = sys._getframe(1).f_locals["self"]
    worker.channel.send({"t": "done", "n": worker.nonce, "ok": True, "v": "early", "writes": []})
    return os.read(worker.channel.read_fd, 1 << 20)  # the next call's job, if it were sent here
'''


def test_a_child_that_stays_after_its_answer_never_gets_the_next_call(escaped_pool):
    replaced = escaped_pool.replaced
    assert run(escaped_pool, LINGER) == "early"
    started = time.monotonic()
    for n in range(3):
        assert run(escaped_pool, "def echo(self, x):\n    return ['mine', x]\n", None, n) == ["mine", n]
    assert time.monotonic() - started < 15
    assert escaped_pool.replaced == replaced + 1


def own_worker(pid: int) -> bool:
    """Whether ``pid`` is a worker this test process started (not a server another test left running)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return parent == os.getpid() and str(ESCAPED).encode() in cmdline.read()
    except OSError:
        return False


def test_a_workers_folder_is_gone_while_it_runs_so_a_killed_uvm_leaves_nothing_in_tmp(escaped_pool):
    """The working folder is removed as soon as the worker has started: escaped code can make
    nothing in it, and a UVM killed with -9 leaves no folder behind (the suite once left 2,176)."""
    run(escaped_pool, "def one(self):\n    return 1\n")
    workers = [pid for pid in os.listdir("/proc") if pid.isdigit() and own_worker(int(pid))]
    assert workers
    assert all(os.readlink(f"/proc/{pid}/cwd").endswith("(deleted)") for pid in workers)
    made = run(escaped_pool, '''
def make(self):
    try:
        os.open("kept", os.O_CREAT | os.O_WRONLY, 0o600)
        return "made"
    except OSError as exc:
        return type(exc).__name__
''')
    assert made != "made"
