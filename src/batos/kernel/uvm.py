"""The UVM: the process that opens the image and serves it over the bridge until told to stop."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any, Callable

from batos import __version__
from batos.image import open_image
from batos.image.genesis import SCHEMA_KEY, Image
from batos.image.storage import DEFAULT_IMAGE
from batos.kernel import protocol
from batos.kernel.bridge import Bridge, Emit
from batos.kernel.dispatch import Dispatcher
from batos.kernel.logs import MESSAGES_LOGGER
from batos.kernel.protocol import Code, ProtocolError, Request
from batos.kernel.workers import ConflictRetriesExhausted, JobAbandoned, WorkerPool

log = logging.getLogger(__name__)
message_log = logging.getLogger(MESSAGES_LOGGER)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
# A worker gets this much longer than a method's budget before its waiter gives up on it.
WORKER_GRACE_SECONDS = 5.0


@dataclass
class Settings:
    """How a UVM runs; each field can also come from the environment as BATOS_<FIELD>."""

    image: str = DEFAULT_IMAGE
    endpoint: str = DEFAULT_ENDPOINT
    workers: int = 4
    method_budget: float = 10.0
    max_message_size: int = protocol.MAX_MESSAGE_SIZE
    drain_seconds: float = 10.0
    log_file: str = "logs/batos.jsonl"
    curve_secret_key: str | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then BATOS_* variables, then ``overrides`` that are not None."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = environ.get(f"BATOS_{field.name.upper()}")
            if raw is not None:
                values[field.name] = _parse_setting(field.name, raw, field.default)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _parse_setting(name: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool) or default is None or isinstance(default, str):
        return raw
    try:
        return type(default)(raw)
    except ValueError:
        raise ValueError(f"BATOS_{name.upper()} must be a {type(default).__name__}, not {raw!r}") from None


class UVM:
    """Opens the image, runs workers and the bridge, and shuts everything down in order."""

    def __init__(self, settings: Settings, on_ready: Callable[[str], None] | None = None):
        self.settings = settings
        self.on_ready = on_ready
        self.image: Image | None = None
        self.pool: WorkerPool | None = None
        self.bridge: Bridge | None = None
        self.dispatcher = Dispatcher(method_budget=settings.method_budget)
        self.started_at = time.time()
        self.counts: Counter[str] = Counter()
        self.failure: BaseException | None = None
        self._stopping: asyncio.Event | None = None

    async def run(self) -> int:
        """Serve until SIGINT/SIGTERM (returns 0) or an unhandled failure (returns 1).

        Failing to start raises; nothing is left open when it does.
        """
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self.image = open_image(self.settings.image)
        serve_task = None
        try:
            self.pool = WorkerPool(self.image.db, self.settings.workers)
            self.pool.start()
            self.bridge = Bridge(
                self.settings.endpoint, self.handle,
                max_message_size=self.settings.max_message_size,
                curve_secret_key=self.settings.curve_secret_key,
            )
            self.bridge.bind()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.request_stop, sig)
            loop.set_exception_handler(self._unhandled)
            serve_task = asyncio.create_task(self.bridge.serve())
            serve_task.add_done_callback(self._serve_ended)
            log.info("BatOS %s serving %s on %s (pid %d)", __version__, self.settings.image,
                     self.bridge.bound_endpoint, os.getpid())
            if self.on_ready is not None:
                self.on_ready(self.bridge.bound_endpoint)
            await self._stopping.wait()
        finally:
            await self._shut_down(serve_task)
        return 1 if self.failure else 0

    def request_stop(self, sig: int | None = None) -> None:
        if sig is not None:
            log.info("received %s: stopping", signal.Signals(sig).name)
        if self._stopping is not None:
            self._stopping.set()

    def _unhandled(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        log.error("unhandled failure: %s", context.get("message"), exc_info=exc)
        self.failure = exc or RuntimeError(context.get("message"))
        self.request_stop()

    def _serve_ended(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("the bridge stopped receiving", exc_info=exc)
            self.failure = exc
            self.request_stop()

    async def _shut_down(self, serve_task: asyncio.Task | None) -> None:
        """Stop accepting, drain, then close everything; every step runs even if one fails."""
        steps = []
        if serve_task is not None:
            serve_task.remove_done_callback(self._serve_ended)
            steps.append(("stop accepting", self._cancel(serve_task)))
        if self.bridge is not None and self.bridge.socket is not None:
            steps.append(("drain", self._drain()))
        for name, step in steps:
            try:
                await step
            except Exception:
                log.exception("shutdown step %r failed", name)
        for name, close in (
            ("workers", lambda: self.pool and self.pool.stop(self.settings.drain_seconds)),
            ("bridge", lambda: self.bridge and self.bridge.close()),
            ("image", lambda: self.image and self.image.close()),
        ):
            try:
                close()
            except Exception:
                log.exception("closing the %s failed", name)
        log.info("stopped")

    async def _cancel(self, task: asyncio.Task) -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _drain(self) -> None:
        left = await self.bridge.drain(self.settings.drain_seconds)
        if left:
            log.warning("%d requests still running after %.0f s; their transactions are aborted", left,
                        self.settings.drain_seconds)

    async def handle(self, request: Request, emit: Emit) -> dict[str, Any]:
        """Serve one request; never raises (every failure becomes an error reply)."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            if self._stopping.is_set():
                raise ProtocolError(Code.SHUTTING_DOWN, "the UVM is shutting down")
            result = await self._perform(request)
            reply = protocol.ok_reply(request.id, result)
        except ProtocolError as exc:
            outcome = exc.code
            reply = protocol.error_reply(request.id, exc.code, exc.message)
        except Exception as exc:
            outcome = Code.INTERNAL
            log.exception("request %s (%s) failed", request.id, request.op)
            reply = protocol.error_reply(request.id, Code.INTERNAL, f"{type(exc).__name__}: {exc}")
        self.counts[request.op] += 1
        message_log.info("%s %s", request.op, outcome, extra={"fields": {
            "id": request.id, "op": request.op,
            "target": request.fields.get("target"), "selector": request.fields.get("selector"),
            "duration_ms": round((time.perf_counter() - started) * 1000, 3), "outcome": outcome,
        }})
        return reply

    async def _perform(self, request: Request) -> Any:
        if request.op == "ping":
            return {"pong": True, "version": __version__, "pid": os.getpid()}
        if request.op == "stats":
            return await self.pool.run(self.stats, writes=False)
        if request.op == "pack":
            days = request.fields.get("days", 0)
            await asyncio.to_thread(self.image.db.pack, days=days)
            return {"packed": True, "size": self.image.db.getSize()}
        operation = functools.partial(getattr(self.dispatcher, f"op_{request.op}"), fields=request.fields)
        try:
            return await self.pool.run(
                operation, writes=request.op in protocol.WRITING_OPS,
                timeout=self.settings.method_budget + WORKER_GRACE_SECONDS,
            )
        except JobAbandoned:
            raise ProtocolError(Code.TIMEOUT, "the request did not finish in time; nothing was written") from None
        except ConflictRetriesExhausted as exc:
            raise ProtocolError(Code.CONFLICT, str(exc)) from None

    def stats(self, root) -> dict[str, Any]:
        """Figures about this process and its image (runs in a worker, reading the root)."""
        db = self.image.db
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started_at, 3),
            "image": self.settings.image,
            "endpoint": self.bridge.bound_endpoint if self.bridge else None,
            "schema": root.get(SCHEMA_KEY),
            "objects": len(db.storage),
            "size_bytes": db.getSize(),
            "last_transaction": db.lastTransaction().hex(),
            "root_objects": sorted(root.keys()),
            "workers": {"size": self.pool.size, "busy": self.pool.busy, "queued": self.pool.queued,
                        "conflicts_retried": self.pool.conflicts},
            "in_flight": len(self.bridge.in_flight) if self.bridge else 0,
            "dropped_replies": self.bridge.dropped_replies if self.bridge else 0,
            "messages": dict(self.counts),
        }
