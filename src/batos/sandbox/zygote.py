"""A confined process that serves each job in a child of its own (the sandbox's worker model).

:func:`become_zygote` is the ``main`` of a worker (:mod:`batos.sandbox.child` for methods,
:mod:`batos.memory.parse_child` for documents): it loads what jobs need, confines itself
(:mod:`batos.sandbox.confine`), says hello with what it applied and what the kernel says of it,
and then never serves a job itself. Each job goes to a child forked from it, which takes forking,
waiting and new pipes away from itself, serves exactly one job and exits. The zygote says on a
pipe of its own, which no child holds, each time the previous child is reaped and the next one
waits (see :class:`batos.sandbox.pool.SandboxProcess`).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import sys
from typing import Callable

from batos.sandbox.channel import Channel
from batos.sandbox.confine import SANDBOX_UID, CallSeal, confine, load_libseccomp

# os.fork also does the interpreter's after-fork work in the child: its own reinitialisation and
# every module's at-fork hook (``random`` reseeds, ``threading`` rebuilds its registry). A zygote
# has one thread and its children start none, so none of that is needed, and it cost each call
# about 170 copied pages, a fifth of the call's CPU. libc's fork, called with the GIL held
# (PyDLL), skips it; :func:`become_zygote` uses it only when the process has a single thread.
_libc_fork = ctypes.PyDLL(None, use_errno=True).fork


def fork_without_hooks() -> int:
    """fork(2) as libc makes it: 0 in the child, the child's pid in the parent."""
    pid = _libc_fork()
    if pid < 0:
        raise OSError(ctypes.get_errno(), "fork failed")
    return pid

STATUS_FIELDS = ("Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")


class Zygote:
    """Forks one child per job; holds nothing a job could use."""

    def __init__(self, channel: Channel, ready_fd: int, seal: CallSeal, serve_one: Callable[[Channel], None],
                 rehearse: Callable[[], None], fork: Callable[[], int] = os.fork):
        self.channel = channel
        self.ready_fd = ready_fd
        self.seal = seal
        self.serve_one = serve_one
        self.rehearse = rehearse
        self.fork = fork

    def serve(self) -> None:
        """Until the UVM closes the ready pipe: keep one child waiting, release it once the one
        before it is reaped."""
        gc.freeze()  # what the zygote holds is never collected, so no child copies it to look
        current = self.fork_child()
        self.release(current)
        while True:
            following = self.fork_child()
            os.waitpid(current[0], 0)
            current = following
            self.release(current)

    def fork_child(self) -> tuple[int, int]:
        """(pid, the write end of its go pipe): a child that has sealed itself and waits."""
        go_read, go_write = os.pipe()
        pid = self.fork()
        if pid == 0:
            try:
                os.close(go_write)
                os.close(self.ready_fd)
                gc.disable()  # a job is short and bounded by its rlimits; collecting would copy the zygote's pages
                self.rehearse()
                if self.seal.apply() is None and os.read(go_read, 1) == b"g":
                    os.close(go_read)
                    self.serve_one(self.channel)
            finally:
                os._exit(0)
        os.close(go_read)
        return pid, go_write

    def release(self, child: tuple[int, int]) -> None:
        os.write(child[1], b"g")
        os.close(child[1])
        os.write(self.ready_fd, b"r")


def kernel_status(fd: int) -> dict[str, str]:
    """What the kernel says of this process (read through a file opened before confinement)."""
    text = os.pread(fd, 8192, 0).decode("ascii", "replace")
    os.close(fd)
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {name: " ".join(fields.get(name, "?").split()) for name in STATUS_FIELDS}


def become_zygote(warm_up: Callable[[], None], serve_one: Callable[[Channel], None],
                  rehearse: Callable[[], None] = lambda: None) -> None:
    """The worker's whole life, with LIMITS (JSON) as its argument and the UVM's pipes as its
    standard input and output: ``warm_up`` loads what jobs need (files can still be opened),
    ``serve_one`` serves one job in a child, ``rehearse`` runs in each child before its job."""
    limits = json.loads(sys.argv[1])
    # The channel moves off fds 0 and 1 so that nothing printed by accident can corrupt it.
    read_fd, write_fd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    channel = Channel(read_fd, write_fd, limits["max_frame"])
    warm_up()
    fork = fork_without_hooks if len(os.listdir("/proc/self/task")) == 1 else os.fork
    status = os.open("/proc/self/status", os.O_RDONLY)
    libseccomp = load_libseccomp()
    seal = CallSeal(libseccomp)
    applied, missing = confine(limits["memory_bytes"], limits["cpu_seconds"], limits["open_files"],
                               limits.get("uid", SANDBOX_UID), libseccomp)
    channel.send({"t": "hello", "pid": os.getpid(), "applied": applied, "missing": missing,
                  "status": kernel_status(status)})
    try:
        Zygote(channel, limits["ready_fd"], seal, serve_one, rehearse, fork).serve()
    except OSError:  # the UVM closed its end: nothing left to serve
        os._exit(0)
