"""A warm pool of sandbox worker processes (see :mod:`batos.sandbox.child`).

A worker is checked out for one call and checked back in afterwards; one that overran its
budget, broke the protocol, sent too much or died is killed and replaced in the background, so
the pool stays warm. Workers are also retired after a number of calls, which bounds whatever a
call could leave behind in one.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from batos.image.values import MAX_NODES
from batos.sandbox.channel import Channel, ChannelError

log = logging.getLogger(__name__)

START_SECONDS = 30.0
CALLS_PER_WORKER = 5000


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


@dataclass
class SandboxProcess:
    process: subprocess.Popen
    channel: Channel
    folder: str
    applied: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    digests: set[str] = field(default_factory=set)  # sources this worker has compiled
    calls: int = 0

    def kill(self) -> None:
        try:
            self.process.kill()
        except OSError:
            pass
        self.process.wait()
        for fd in (self.channel.read_fd, self.channel.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)


def start_worker(limits: SandboxLimits) -> SandboxProcess:
    """A new worker process that has confined itself and said hello."""
    folder = tempfile.mkdtemp(prefix="batos-sandbox-")
    child_limits = json.dumps({"memory_bytes": limits.memory_bytes, "cpu_seconds": limits.cpu_seconds,
                               "open_files": limits.open_files, "max_frame": 64 * 1024**2})
    process = subprocess.Popen(
        [sys.executable, "-I", "-m", "batos.sandbox.child", child_limits],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        cwd=folder, env={}, close_fds=True, start_new_session=True,  # a terminal's Ctrl-C is the UVM's to handle
    )
    channel = Channel(os.dup(process.stdout.fileno()), os.dup(process.stdin.fileno()), limits.max_frame)
    process.stdout.close()
    process.stdin.close()
    worker = SandboxProcess(process, channel, folder)
    try:
        hello = channel.receive(time.monotonic() + START_SECONDS)
    except ChannelError as exc:
        worker.kill()
        raise RuntimeError(f"a sandbox worker did not start: {exc}") from None
    worker.applied, worker.missing = list(hello["applied"]), list(hello["missing"])
    return worker


class SandboxPool:
    """``size`` warm workers; :meth:`checkout` blocks while all are busy."""

    def __init__(self, size: int, limits: SandboxLimits | None = None):
        self.size = max(1, size)
        self.limits = limits or SandboxLimits()
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
            worker = start_worker(self.limits)
        except Exception:
            with self._lock:
                self._alive -= 1
            log.exception("starting a sandbox worker failed")
            return
        self.confinement = {"applied": worker.applied, "missing": worker.missing}
        if worker.missing:
            log.info("sandbox worker %d confined with %s; not applied: %s", worker.process.pid,
                     ", ".join(worker.applied), "; ".join(worker.missing))
        if self._closed:
            worker.kill()
            return
        self._idle.put(worker)

    def checkout(self, timeout: float) -> SandboxProcess:
        """An idle worker, waiting at most ``timeout`` seconds (TimeoutError). Fewer than ``size``
        alive: another is started in the background; the caller never waits for a start it did
        not need."""
        if self._idle.empty():
            self._start_one(only_below_size=True)
        try:
            return self._idle.get(timeout=max(timeout, 0.001))
        except queue.Empty:
            raise TimeoutError("every sandbox worker is busy") from None

    def checkin(self, worker: SandboxProcess) -> None:
        worker.calls += 1
        if self._closed or worker.calls >= CALLS_PER_WORKER or worker.process.poll() is not None:
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
            try:
                worker.channel.send({"t": "stop"})
            except OSError:
                pass
            worker.kill()
