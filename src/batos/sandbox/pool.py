"""A warm pool of sandbox worker processes (see :mod:`batos.sandbox.child`).

A worker is checked out for one call and checked back in afterwards. Every call is served by a
fresh child of the worker's zygote; a worker is handed out only once its zygote has said, on a
pipe no call holds, that the previous child is gone and the next one waits, and only when
nothing is left unread from the previous call. One that overran its budget, broke the protocol,
sent too much, left anything behind or died is killed with all its children and replaced in the
background, so the pool stays warm. A worker whose kernel status shows a privilege (uid 0, a
capability, no ``no_new_privs``, no seccomp filter) is refused before it serves anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from batos.image.values import MAX_NODES
from batos.sandbox.channel import Channel, ChannelError
from batos.sandbox.confine import SANDBOX_UID

log = logging.getLogger(__name__)

START_SECONDS = 30.0
READY_SECONDS = 2.0  # how long the previous call's child may take to be gone


@dataclass(frozen=True)
class SandboxLimits:
    """What a method may use and produce; every field has a BATOS_ setting in the UVM."""

    memory_bytes: int = 1024**3
    cpu_seconds: int = 3600  # a worker's whole life; a call's own limit is its wall-clock budget
    open_files: int = 16
    max_frame: int = 16 * 1024**2  # one message from a worker: a reply, a request, a write set
    max_slot_bytes: int = 1024**2
    max_value_depth: int = 32
    max_write_bytes: int = 8 * 1024**2  # everything one message writes to the image
    max_nodes: int = MAX_NODES  # values sent to a worker are walked at most this far, as for replies
    uid: int = SANDBOX_UID  # the workers' uid and gid when the UVM runs as root


@dataclass
class SandboxProcess:
    process: subprocess.Popen
    channel: Channel
    ready_fd: int  # the zygote's own pipe: one byte per child that is ready for a call
    applied: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)
    calls: int = 0

    def wait_until_ready(self, deadline: float) -> bool:
        """True once the zygote says a fresh child waits and nothing of the last call is left
        unread; False when it does not say so by ``deadline`` or anything is left."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([self.ready_fd], [], [], remaining)[0]:
            return False
        if os.read(self.ready_fd, 1) != b"r":
            return False
        return not select.select([self.channel.read_fd], [], [], 0)[0]

    def kill(self) -> None:
        """Kill the zygote and any child of it (they share its process group)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except OSError:
            pass
        self.process.wait()
        for fd in (self.channel.read_fd, self.channel.write_fd, self.ready_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def privilege_left(status: dict[str, str], applied: list[str]) -> str | None:
    """Why a worker with this kernel status may not serve, or None."""
    if "0" in status.get("Uid", "0").split() and os.geteuid() == 0:
        return "it still runs as root"
    for name in ("CapPrm", "CapEff", "CapAmb"):
        if int(status.get(name, "1") or "1", 16) != 0:
            return f"it holds capabilities ({name} {status.get(name)})"
    if status.get("NoNewPrivs") != "1":
        return "no_new_privs is not set"
    if status.get("Seccomp") != "2" or "seccomp" not in applied:
        return "it has no seccomp filter"
    return None


def start_worker(limits: SandboxLimits, argv: tuple[str, ...] = ("-m", "batos.sandbox.child")) -> SandboxProcess:
    """A new worker process that has confined itself and said hello. ``argv`` names what the
    interpreter runs (tests give a stand-in for code that escaped RestrictedPython)."""
    folder = tempfile.mkdtemp(prefix="batos-sandbox-")
    ready_read, ready_write = os.pipe()
    child_limits = json.dumps({"memory_bytes": limits.memory_bytes, "cpu_seconds": limits.cpu_seconds,
                               "open_files": limits.open_files, "max_frame": 64 * 1024**2, "uid": limits.uid,
                               "ready_fd": ready_write})
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", *argv, child_limits],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, pass_fds=(ready_write,),
            cwd=folder, env={}, close_fds=True, start_new_session=True,  # a terminal's Ctrl-C is the UVM's to handle
        )
    finally:
        os.close(ready_write)
        # The worker keeps the removed folder as its working directory: nothing can be made in it,
        # and nothing is left in /tmp when the UVM is killed.
        with contextlib.suppress(OSError):
            os.rmdir(folder)
    channel = Channel(os.dup(process.stdout.fileno()), os.dup(process.stdin.fileno()), limits.max_frame)
    process.stdout.close()
    process.stdin.close()
    worker = SandboxProcess(process, channel, ready_read)
    try:
        hello = channel.receive(time.monotonic() + START_SECONDS)
    except ChannelError as exc:
        worker.kill()
        raise RuntimeError(f"a sandbox worker did not start: {exc}") from None
    worker.applied, worker.missing = list(hello["applied"]), list(hello["missing"])
    worker.status = dict(hello.get("status") or {})
    problem = privilege_left(worker.status, worker.applied)
    if problem:
        worker.kill()
        raise RuntimeError(f"a sandbox worker was refused: {problem} (not applied: {'; '.join(worker.missing)})")
    return worker


class SandboxPool:
    """``size`` warm workers; :meth:`checkout` blocks while all are busy."""

    def __init__(self, size: int, limits: SandboxLimits | None = None,
                 argv: tuple[str, ...] = ("-m", "batos.sandbox.child")):
        self.size = max(1, size)
        self.limits = limits or SandboxLimits()
        self.argv = argv
        self.failure: str | None = None
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._alive = 0
        self._closed = False
        self.replaced = 0
        self.confinement: dict[str, list[str]] = {"applied": [], "missing": []}

    def start(self) -> None:
        """Start the workers in the background."""
        for _ in range(self.size):
            self._start_one()

    def _start_one(self, only_below_size: bool = False) -> None:
        """Count one more worker alive and start it in the background."""
        with self._lock:
            if only_below_size and self._alive >= self.size:
                return
            self._alive += 1
        threading.Thread(target=self._add, name="batos-sandbox-start", daemon=True).start()

    def _add(self) -> None:
        try:
            worker = start_worker(self.limits, self.argv)
        except Exception as exc:
            with self._lock:
                self._alive -= 1
            self.failure = str(exc)
            log.error("starting a sandbox worker failed: %s", exc)
            return
        self.failure = None
        self.confinement = {"applied": worker.applied, "missing": worker.missing, "status": worker.status}
        if worker.missing:
            log.info("sandbox worker %d confined with %s; not applied: %s", worker.process.pid,
                     ", ".join(worker.applied), "; ".join(worker.missing))
        if self._closed:
            worker.kill()
            return
        self._idle.put(worker)

    def checkout(self, timeout: float) -> SandboxProcess:
        """An idle worker whose fresh child waits, waiting at most ``timeout`` seconds
        (TimeoutError). Fewer than ``size`` alive: another is started in the background; the
        caller never waits for a start it did not need."""
        deadline = time.monotonic() + max(timeout, 0.001)
        while True:
            if self._idle.empty():
                self._start_one(only_below_size=True)
            try:
                worker = self._idle.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                reason = f" (the last start failed: {self.failure})" if self.failure and self._alive == 0 else ""
                raise TimeoutError(f"every sandbox worker is busy{reason}") from None
            if worker.wait_until_ready(min(deadline, time.monotonic() + READY_SECONDS)):
                return worker
            log.warning("sandbox worker %d was not ready for another call; replacing it", worker.process.pid)
            self.discard(worker)

    def checkin(self, worker: SandboxProcess) -> None:
        worker.calls += 1
        if self._closed or worker.process.poll() is not None:
            self.discard(worker)
        else:
            self._idle.put(worker)

    def discard(self, worker: SandboxProcess) -> None:
        """Kill ``worker`` and start a replacement in the background."""
        worker.kill()
        with self._lock:
            self._alive -= 1
        if not self._closed:
            self.replaced += 1
            self._start_one()

    def stats(self) -> dict:
        return {"size": self.size, "alive": self._alive, "idle": self._idle.qsize(), "replaced": self.replaced,
                "confinement": self.confinement}

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                return
            worker.kill()
