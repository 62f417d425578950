"""A sandbox worker: the only process in which code stored in the image ever runs.

Started by :mod:`batos.sandbox.pool` as ``python -I -m batos.sandbox.child LIMITS`` in an empty
folder with an empty environment. It imports what it needs, confines itself
(:mod:`batos.sandbox.confine`), says hello with what it applied and what the kernel says of it,
and becomes a **zygote** (:mod:`batos.sandbox.zygote`): it never runs a method itself. Each call
is served by a child forked from it, which takes forking away from itself, waits until the
zygote has reaped the child before it, serves exactly one call and exits. Nothing a call does (an implant, a replaced function, a
frame left in the pipe) can reach the next one: the next call is another process, forked from a
zygote no call has touched. The zygote tells the UVM on a pipe of its own (which no call holds)
each time a new child is ready, so the UVM never gives a call to a worker whose previous child
is still alive.

A method sees :class:`ObjectProxy` capabilities, never objects: reading a name asks the UVM
(the receiver's own data slots come along with the call), a stored method found that way is
compiled here and run on the proxy, a trait primitive (``clone``, ``describe``, ``oid``,
``slot_names``) is run by the UVM. Writes are collected, containers read from slots are compared
with what was read, and the changes go to the UVM with the next request or the end of the call;
the UVM decides what may be written. Every frame of a call carries the call's nonce.
"""

from __future__ import annotations

import marshal
import traceback
from typing import Any, Callable

from batos.sandbox import channel as wire
from batos.sandbox.channel import Channel, Ref
from batos.sandbox.restricted import METHOD_FILE_PREFIX, compile_method, define_method, method_code
from batos.sandbox.zygote import become_zygote
DELETED = object()


class NotUnderstood(AttributeError):
    """No object in the receiver's delegation chain has a slot of that name."""


class Refused(Exception):
    """The UVM refused a request of this call (a protected slot, a value over a limit...)."""


class ObjectProxy(Ref):
    """A capability: one object of the current call, by handle (see the module docstring)."""

    __slots__ = ("_call",)

    def __init__(self, handle: int, call: Call):
        super().__init__(handle)
        object.__setattr__(self, "_call", call)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._call.read(self._handle, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            raise AttributeError(f"slot names may not begin with '_' ({name!r})")
        self._call.write(self._handle, name, value)

    def __delattr__(self, name: str) -> None:
        if name.startswith("_"):
            raise AttributeError(name)
        self._call.write(self._handle, name, DELETED)

    def __repr__(self) -> str:
        return f"<object #{self._handle}>"


class Call:
    """One call's view of the image: cached slots, pending writes, compiled methods."""

    def __init__(self, worker: Worker, receiver_slots: dict[str, Any]):
        self.worker = worker
        self.proxies: dict[int, ObjectProxy] = {}
        self.slots: dict[tuple[int, str], Any] = {}
        self.originals: dict[tuple[int, str], bytes] = {}
        self.pending: dict[tuple[int, str], Any] = {}
        self.callables: dict[tuple[int, str], Callable] = {}
        for name, value in receiver_slots.items():
            self._remember(0, name, self.local(value))

    # values ---------------------------------------------------------------------------------------

    def proxy(self, handle: int) -> ObjectProxy:
        if handle not in self.proxies:
            self.proxies[handle] = ObjectProxy(handle, self)
        return self.proxies[handle]

    def local(self, value: Any) -> Any:
        """A value from the UVM with every Ref made a proxy."""
        if isinstance(value, Ref):
            return self.proxy(value._handle)
        if isinstance(value, list):
            return [self.local(v) for v in value]
        if isinstance(value, dict):
            return {k: self.local(v) for k, v in value.items()}
        return value

    def _remember(self, handle: int, name: str, value: Any) -> None:
        self.slots[(handle, name)] = value
        if isinstance(value, (list, dict)):
            self.originals[(handle, name)] = wire.pack(value)

    # slots -----------------------------------------------------------------------------------------

    def read(self, handle: int, name: str) -> Any:
        key = (handle, name)
        if key in self.pending and self.pending[key] is not DELETED:
            return self.pending[key]
        if key in self.slots and key not in self.pending:
            return self.slots[key]
        if key in self.callables:
            return self.callables[key]
        found = self.request({"t": "lookup", "h": handle, "name": name})
        kind = found["k"]
        if kind == "data":
            self._remember(handle, name, self.local(found["v"]))
            return self.slots[key]
        if kind == "missing":
            raise NotUnderstood(f"object #{handle} does not understand {name!r}")
        if kind == "service":
            raise TypeError(f"{name!r} is a service of the runtime; send it as a message, it cannot run inside a method")
        if kind == "method":
            function = self.worker.function(found["selector"], found["digest"], found.get("source"), found.get("code"))
            receiver = self.proxy(handle)
            bound = lambda *args, **kwargs: function(receiver, *args, **kwargs)  # noqa: E731
        else:
            bound = lambda *args, **kwargs: self.primitive(handle, name, args, kwargs)  # noqa: E731
        self.callables[key] = bound
        return bound

    def write(self, handle: int, name: str, value: Any) -> None:
        self.pending[(handle, name)] = value
        self.callables.pop((handle, name), None)

    def primitive(self, handle: int, name: str, args: tuple, kwargs: dict) -> Any:
        return self.local(self.request({"t": "prim", "h": handle, "name": name, "args": list(args), "kwargs": kwargs}))

    def changes(self) -> list[list]:
        """Pending writes plus containers changed in place, as ``[handle, name, value, deleted]``."""
        for key, original in self.originals.items():
            if key not in self.pending and wire.pack(self.slots[key]) != original:
                self.pending[key] = self.slots[key]
        writes = []
        for (handle, name), value in self.pending.items():
            writes.append([handle, name, None, True] if value is DELETED else [handle, name, value, False])
            if value is DELETED:
                self.slots.pop((handle, name), None)
                self.originals.pop((handle, name), None)
            else:
                self._remember(handle, name, value)
        self.pending.clear()
        return writes

    def request(self, message: dict) -> Any:
        message["n"] = self.worker.nonce
        message["writes"] = self.changes()
        self.worker.channel.send(message)
        reply = self.worker.channel.receive()
        if not reply.get("ok"):
            raise Refused(reply.get("error", "refused"))
        return reply.get("v")


def load_method(selector: str, source: str | None, code: bytes | None) -> Callable:
    """The method's function, defined on the capability proxies. The UVM sends its own compile of
    the source (trusted bytes: it compiled them), so a call never compiles."""
    if code is not None:
        return define_method(selector, marshal.loads(code), (ObjectProxy,))
    return compile_method(selector, source, f"{METHOD_FILE_PREFIX}{selector}>", (ObjectProxy,))


class Worker:
    """One call's server: runs the job it is given and answers with the final frame."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self.nonce = ""
        self.compiled: dict[str, Callable] = {}

    def function(self, selector: str, digest: str, source: str | None, code: bytes | None) -> Callable:
        """The function the UVM compiled (``code``, marshalled) or, without it, ``source``
        compiled here."""
        if digest not in self.compiled:
            self.compiled[digest] = load_method(selector, source, code)
        return self.compiled[digest]

    def serve_one(self) -> None:
        job = self.channel.receive()
        if isinstance(job, dict) and job.get("t") == "call":
            self.channel.send_bytes(self.run(job))

    def run(self, job: dict) -> bytes:
        """The final frame of one call, packed."""
        self.nonce = str(job.get("n", ""))
        done = {"t": "done", "n": self.nonce}
        call = Call(self, job.get("slots") or {})
        try:
            function = self.function(job["selector"], job["digest"], job.get("source"), job.get("code"))
            result = function(call.proxy(0), *call.local(job.get("args") or []), **call.local(job.get("kwargs") or {}))
            writes = call.changes()
            try:
                return wire.pack({**done, "ok": True, "v": result, "writes": writes})
            except TypeError:
                return wire.pack({**done, "ok": True, "v": described(result), "writes": writes})
        except Refused as exc:
            return wire.pack({**done, "ok": False, "refused": str(exc)})
        except BaseException as exc:  # SystemExit, KeyboardInterrupt...: reported, never obeyed
            try:
                return wire.pack({**done, **failure(exc)})
            except BaseException:
                return wire.pack({**done, "ok": False, "error": "the method failed in a way that cannot be reported"})


def described(value: Any, depth: int = 0) -> Any:
    """A result made of plain data, with what plain data cannot hold written ``{"$repr": ...}``."""
    if depth > 32:
        return {"$repr": "..."}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [described(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): described(v, depth + 1) for k, v in value.items()}
    try:
        wire.pack(value)
        return value
    except (TypeError, ValueError):
        return {"$repr": repr(value)[:200]}


def failure(exc: BaseException) -> dict:
    frames = [f for f in traceback.extract_tb(exc.__traceback__, limit=64) if f.filename.startswith(METHOD_FILE_PREFIX)]
    where = f" (line {frames[-1].lineno} of {frames[-1].name})" if frames else ""
    return {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:2000]}{where}"}


WARM_UP_SOURCE = "def f(self, x=1):\n    print('')\n    return [f'{x}', sorted({'a': 1}), 1 / 0]\n"


def warm_up() -> None:
    """Load, while files can still be opened, everything a call may need later."""
    call = Call(Worker(Channel(-1, -1, 0)), {})
    function = load_method("f", WARM_UP_SOURCE, None)
    try:
        function(call.proxy(0))
    except ZeroDivisionError as exc:
        wire.pack(failure(exc))
    wire.pack(described([{1, 2}, range(2), 10**30]))
    "é".encode("utf-8").decode("latin-1").encode("ascii", "replace")


REHEARSAL = wire.pack({"t": "call", "n": "", "selector": "rehearse", "digest": "", "slots": {"name": "x"},
                       "code": method_code("rehearse", "def rehearse(self, x):\n    return [x, self.name]\n"),
                       "args": [1], "kwargs": {}})


def rehearse() -> None:
    """A practice call in a fresh child, before its real one: the pages a call touches are copied
    from the zygote now, not while the caller waits."""
    Worker(Channel(-1, -1, 0)).run(wire.unpack(REHEARSAL))


def serve_method_call(channel: Channel) -> None:
    """Serve the one call this child is for."""
    Worker(channel).serve_one()


def main() -> None:
    become_zygote(warm_up, serve_method_call, rehearse)


if __name__ == "__main__":
    main()
