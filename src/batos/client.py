"""Clients of the Synaptic Bridge: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

Every call returns the reply's ``result``. An error reply raises :class:`RemoteError` carrying the
server's code and message; no reply in time raises :class:`BridgeTimeout`. A client is not shared
between threads.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import stat
import time
import uuid
from typing import Any, Callable

import ormsgpack
import zmq
import zmq.asyncio

from batos.errors import BatosError, TooLarge

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_TIMEOUT = 30.0
UPLOAD_CHUNK = 4 * 1024 * 1024

EventCallback = Callable[[dict[str, Any]], None]
EVENT = object()  # what _read reports for an event frame of the awaited request


class RemoteError(Exception):
    """The server answered with an error."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class BridgeTimeout(TimeoutError):
    """No reply arrived in time (the server may be down, busy, or unreachable)."""


def default_endpoint() -> str:
    return os.environ.get("BATOS_ENDPOINT", DEFAULT_ENDPOINT)


class _Calls:
    """Request building and reply reading shared by both clients."""

    def __init__(self, endpoint: str | None, timeout: float, server_key: str | None,
                 client_keys: tuple[str, str] | None = None):
        self.endpoint = endpoint or default_endpoint()
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = timeout
        self.server_key = server_key or os.environ.get("BATOS_CURVE_SERVER_KEY")
        # A UVM with a clients file admits only listed keys: this client's own pair, when it has one.
        self.client_keys = client_keys or (os.environ.get("BATOS_CURVE_CLIENT_PUBLIC_KEY"),
                                           os.environ.get("BATOS_CURVE_CLIENT_SECRET_KEY"))
        self.last_reply: dict[str, Any] | None = None
        self._ids = (f"{uuid.uuid4().hex[:8]}-{n}" for n in itertools.count(1))

    def _configure(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        if self.server_key:
            public, secret = (k.encode() for k in self.client_keys) if all(self.client_keys) else zmq.curve_keypair()
            sock.curve_serverkey = self.server_key.encode()
            sock.curve_publickey = public
            sock.curve_secretkey = secret
        sock.connect(self.endpoint)

    def _request(self, op: str, fields: dict[str, Any]) -> tuple[str, bytes]:
        request_id = next(self._ids)
        return request_id, ormsgpack.packb({"id": request_id, "op": op, **fields})

    def _read(self, frames: list[bytes], request_id: str, on_event: EventCallback | None) -> tuple[bool, Any]:
        """(done, result) for one received message: (True, result) for this request's reply,
        (False, EVENT) for one of its events, (False, None) for anything else (a stale reply)."""
        message = ormsgpack.unpackb(frames[-1])
        if not isinstance(message, dict) or message.get("id") != request_id:
            return False, None
        if "event" in message:
            if on_event is not None:
                on_event(message["event"])
            return False, EVENT
        self.last_reply = message
        if message.get("ok"):
            return True, message.get("result")
        error = message.get("error") or {}
        raise RemoteError(error.get("code", "unknown"), error.get("message", ""))

    def _timed_out(self, op: str, timeout: float) -> BridgeTimeout:
        return BridgeTimeout(f"no reply to {op!r} from {self.endpoint} within {timeout:g} s; is `batos run` up?")


def _send_fields(target: str, selector: str, args: tuple, kwargs: dict, intent: str | None = None,
                 examples: list | None = None, wait: bool = True) -> dict[str, Any]:
    fields: dict[str, Any] = {"target": target, "selector": selector}
    if args:
        fields["args"] = list(args)
    if kwargs:
        fields["kwargs"] = kwargs
    if intent is not None:
        fields["intent"] = intent
    if examples is not None:
        fields["examples"] = list(examples)
    if not wait:
        fields["wait"] = False
    return fields


def _ask_fields(question: str, persona: str | None, conversation: str | None, depth: str | None,
                turns: int | None = None) -> dict[str, Any]:
    fields: dict[str, Any] = {"question": question}
    for name, value in (("persona", persona), ("conversation", conversation), ("depth", depth), ("turns", turns)):
        if value is not None:
            fields[name] = value
    return fields


def _text_events(stream: Callable[[str], None] | None, on_event: EventCallback | None) -> EventCallback | None:
    if stream is None:
        return on_event

    def events(event: dict) -> None:
        if "text" in event:
            stream(event["text"])
        if on_event is not None:
            on_event(event)
    return events


class Client(_Calls):
    """Blocking client: ``Client(endpoint, timeout=...)``."""

    def __init__(self, endpoint: str | None = None, timeout: float = DEFAULT_TIMEOUT, server_key: str | None = None,
                 client_keys: tuple[str, str] | None = None):
        super().__init__(endpoint, timeout, server_key, client_keys)
        self._context = zmq.Context.instance()
        self._socket = self._context.socket(zmq.DEALER)
        self._configure(self._socket)

    def call(self, op: str, on_event: EventCallback | None = None, timeout: float | None = None, **fields: Any) -> Any:
        """Send one request and wait for its reply (events go to ``on_event``).

        ``timeout`` bounds the silence, not the whole call: each event from the server (progress
        of a long operation) starts the wait afresh.
        """
        timeout = self.timeout if timeout is None else timeout
        request_id, payload = self._request(op, fields)
        self._socket.send(payload)
        deadline_ms = timeout * 1000
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        started = time.monotonic()
        while True:
            left = deadline_ms - (time.monotonic() - started) * 1000
            if left <= 0 or not poller.poll(left):
                raise self._timed_out(op, timeout)
            done, result = self._read(self._socket.recv_multipart(), request_id, on_event)
            if done:
                return result
            if result is EVENT:
                started = time.monotonic()

    def ping(self) -> dict:
        return self.call("ping")

    def stats(self) -> dict:
        return self.call("stats")

    def describe(self, target: str) -> dict:
        return self.call("describe", target=target)

    def get(self, target: str, slot: str) -> Any:
        return self.call("get", target=target, slot=slot)

    def set(self, target: str, slot: str, value: Any) -> Any:
        return self.call("set", target=target, slot=slot, value=value)

    def define(self, target: str, source: str) -> dict:
        return self.call("define", target=target, source=source)

    def send(self, target: str, selector: str, *args: Any, intent: str | None = None, examples: list | None = None,
             wait: bool = True, on_event: EventCallback | None = None, **kwargs: Any) -> Any:
        """Send a message. ``intent`` and ``examples`` are used only if nothing understands it and a
        cycle writes the method; with ``wait=False`` such a send returns the cycle's id at once."""
        return self.call("send", on_event=on_event, **_send_fields(target, selector, args, kwargs, intent, examples, wait))

    def pack(self, days: float = 0) -> dict:
        return self.call("pack", days=days)

    def ask(self, question: str, persona: str | None = None, conversation: str | None = None,
            stream: Callable[[str], None] | None = None, depth: str | None = None,
            on_event: EventCallback | None = None, timeout: float | None = None, turns: int | None = None) -> dict:
        """Ask the personas: ``{"conversation", "route", "turns", "seconds"}``. ``stream`` gets each
        piece of text as it is generated; ``on_event`` every event (turns, states, text); ``turns``
        caps the dialogue below the server's BATOS_MAX_TURNS."""
        return self.call("ask", on_event=_text_events(stream, on_event), timeout=timeout,
                         **_ask_fields(question, persona, conversation, depth, turns))

    def route(self, question: str) -> dict:
        """Who would answer ``question``: ``{"archetype", "lead", "partners", "scores", ...}``."""
        return self.call("route", question=question)

    def memory_ingest(self, paths: list[str | os.PathLike],
                      on_progress: EventCallback | None = None) -> list[dict]:
        """Take files (or every accepted file under a folder) into memory, one document each.

        Returns one ``{"source", "status", ...}`` per file, ``source`` its absolute path; status is
        ``added``, ``replaced``, ``unchanged``, ``refused`` (with ``code`` and ``error``) or
        ``skipped`` (with ``error``: not a regular file, or a link that leaves the folder given). A
        path that does not exist raises FileNotFoundError before anything is sent, and a file over
        the server's limit is refused without being sent (its bytes are counted as they are read,
        whatever its size said)."""
        from batos.memory.extract import kind_of, too_large

        files, results = memory_files(paths)
        limit = self.call("memory_stats")["max_bytes"] if files else 0
        for path in files:
            try:
                if kind_of(path) and (size := os.path.getsize(path)) > limit:  # the server would refuse it after the upload
                    raise too_large(path, size, limit)
                upload_id = self.upload(path, max_bytes=limit if kind_of(path) else None)
                results.append(self.call("memory_ingest", on_event=on_progress, timeout=max(self.timeout, 1800.0),
                                          upload_id=upload_id, source=path))
            except (RemoteError, BatosError) as exc:
                results.append({"source": path, "status": "refused", "code": exc.code, "error": exc.message if isinstance(exc, RemoteError) else str(exc)})
            except OSError as exc:
                results.append({"source": path, "status": "skipped", "error": f"{path}: {exc.strerror or exc}"})
        return results

    def memory_search(self, query: str, k: int = 5, mode: str = "hybrid", diverse: bool = False) -> list[dict]:
        """Hits ``{"source", "chunk", "score", "text", "section"}``, best first; ``mode`` is
        ``hybrid``, ``lexical`` or ``vector``; ``diverse`` drops near-duplicates (MMR)."""
        return self.call("memory_search", query=query, k=k, mode=mode, diverse=diverse)

    def upload(self, path: str | os.PathLike, on_progress: Callable[[int, int], None] | None = None,
               max_bytes: int | None = None) -> str:
        """Stream a regular file to the server in chunks; return the upload id to name it by.
        OSError for anything but a regular file; TooLarge once more than ``max_bytes`` were read."""
        upload_id = uuid.uuid4().hex
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO swapped in must not block the open
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            total = os.fstat(fd).st_size
            offset = 0
            while True:
                chunk = f.read(UPLOAD_CHUNK)
                if not chunk and offset:
                    break
                if max_bytes is not None and offset + len(chunk) > max_bytes:
                    raise TooLarge(f"{path}: more than {max_bytes} bytes; memory takes files of at most that size")
                self.call("upload", upload_id=upload_id, offset=offset, data=chunk)
                offset += len(chunk)
                if on_progress:
                    on_progress(offset, total)
                if not chunk:
                    break
        return upload_id

    def close(self) -> None:
        self._socket.close(linger=0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def memory_files(paths: list[str | os.PathLike]) -> tuple[list[str], list[dict]]:
    """(absolute paths of the files to send, what was skipped and why). Folders are walked for the
    files memory takes; only regular files are sent, and in a folder a link is followed only
    when it stays inside that folder. A file named outright is sent if it is a regular file, and
    the server says if it refuses it."""
    from batos.memory.extract import kind_of

    missing = [str(p) for p in paths if not os.path.lexists(p)]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    found: list[str] = []
    skipped: list[dict] = []

    def take(path: str, root: str | None) -> None:
        real = os.path.realpath(path)
        if root is not None and os.path.commonpath([real, root]) != root:
            skipped.append({"source": path, "status": "skipped", "error": f"{path}: a link that leaves {root}"})
        elif not os.path.isfile(real):  # a FIFO, a device, a socket, a broken link
            skipped.append({"source": path, "status": "skipped", "error": f"{path}: not a regular file"})
        else:
            found.append(path)

    for path in map(os.path.abspath, paths):
        if not os.path.isdir(path):
            take(path, None)
            continue
        root = os.path.realpath(path)
        for folder, subfolders, files in os.walk(root):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            for name in sorted(files):
                if kind_of(name) and not name.startswith("."):
                    take(os.path.join(folder, name), root)
    return found, skipped


class AsyncClient(_Calls):
    """asyncio client with the same calls as :class:`Client`, as coroutines."""

    def __init__(self, endpoint: str | None = None, timeout: float = DEFAULT_TIMEOUT, server_key: str | None = None,
                 client_keys: tuple[str, str] | None = None):
        super().__init__(endpoint, timeout, server_key, client_keys)
        self._context = zmq.asyncio.Context.instance()
        self._socket = self._context.socket(zmq.DEALER)
        self._configure(self._socket)
        self._pending: dict[str, tuple[asyncio.Future, EventCallback | None]] = {}
        self._reader: asyncio.Future | None = None

    async def call(self, op: str, on_event: EventCallback | None = None, timeout: float | None = None, **fields: Any) -> Any:
        """Send one request and await its reply; concurrent calls on one client are fine."""
        timeout = self.timeout if timeout is None else timeout
        request_id, payload = self._request(op, fields)
        waiter = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (waiter, on_event)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.ensure_future(self._route_replies())
        try:
            await self._socket.send(payload)
            return await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            raise self._timed_out(op, timeout) from None
        finally:
            self._pending.pop(request_id, None)

    async def _route_replies(self) -> None:
        while self._pending:
            frames = await self._socket.recv_multipart()
            message = ormsgpack.unpackb(frames[-1])
            entry = self._pending.get(message.get("id")) if isinstance(message, dict) else None
            if entry is None:
                continue
            waiter, on_event = entry
            try:
                done, result = self._read(frames, message["id"], on_event)
            except RemoteError as exc:
                if not waiter.done():
                    waiter.set_exception(exc)
                continue
            if done and not waiter.done():
                waiter.set_result(result)

    async def ping(self) -> dict:
        return await self.call("ping")

    async def stats(self) -> dict:
        return await self.call("stats")

    async def describe(self, target: str) -> dict:
        return await self.call("describe", target=target)

    async def get(self, target: str, slot: str) -> Any:
        return await self.call("get", target=target, slot=slot)

    async def set(self, target: str, slot: str, value: Any) -> Any:
        return await self.call("set", target=target, slot=slot, value=value)

    async def define(self, target: str, source: str) -> dict:
        return await self.call("define", target=target, source=source)

    async def send(self, target: str, selector: str, *args: Any, intent: str | None = None, examples: list | None = None,
                   wait: bool = True, on_event: EventCallback | None = None, **kwargs: Any) -> Any:
        return await self.call("send", on_event=on_event, **_send_fields(target, selector, args, kwargs, intent, examples, wait))

    async def pack(self, days: float = 0) -> dict:
        return await self.call("pack", days=days)

    async def ask(self, question: str, persona: str | None = None, conversation: str | None = None,
                  stream: Callable[[str], None] | None = None, depth: str | None = None,
                  on_event: EventCallback | None = None, timeout: float | None = None,
                  turns: int | None = None) -> dict:
        return await self.call("ask", on_event=_text_events(stream, on_event), timeout=timeout,
                               **_ask_fields(question, persona, conversation, depth, turns))

    async def route(self, question: str) -> dict:
        return await self.call("route", question=question)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self._socket.close(linger=0)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
