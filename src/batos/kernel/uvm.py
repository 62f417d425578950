"""The UVM: the process that opens the image and serves it over the bridge until told to stop."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import tempfile
import threading
import time
from collections import Counter

import transaction
from dataclasses import dataclass
from typing import Any, Callable

from batos import __version__
from batos.config import settings_from_env
from batos.image import open_image
from batos.image.genesis import SCHEMA_KEY, Image
from batos.image.storage import DEFAULT_IMAGE, normalize_uri
from batos.image.values import ValueTooLarge
from batos.errors import BatosError, Forbidden
from batos.llm.core import CognitiveCore, ModelUnavailable
from batos.llm.generation import BackendError, ConfigurationError
from batos.llm.settings import LLMSettings
from batos.llm.embeddings import Embedder, EmbeddingsUnavailable
from batos.memory.catalog import KNOWLEDGE_CATALOG
from batos.memory.service import MemoryPolicy, MemoryService, documents_of
from batos.mind.codex import CODEX
from batos.mind.conversations import CONVERSATIONS
from batos.mind.cycle import CyclePolicy, CycleRunner
from batos.mind.cycle_service import CycleService
from batos.mind.exemplars import EXEMPLARS, exemplars_of
from batos.mind.router import Router, archetype_in, tie_break_prompt
from batos.mind.service import MindPolicy, MindService
from batos.mind.synaptic import SynapticCycle
from batos.mind.writers import writer_for
from batos.kernel import protocol, services
from batos.kernel.bridge import Bridge, Emit
from batos.kernel.dispatch import SYNTHESIZE, Dispatcher, ServiceCall
from batos.kernel.identities import ClientsFileError, read_clients
from batos.kernel.limits import CycleStarts
from batos.kernel.logs import MESSAGES_LOGGER
from batos.kernel.models import MODEL_WAIT_SECONDS, ModelService
from batos.kernel.protocol import Code, Context, ProtocolError, Request
from batos.kernel.uploads import Uploads
from batos.kernel.workers import WorkerPool
from batos.sandbox import SandboxLimits, SandboxPool

log = logging.getLogger(__name__)
EMBEDDINGS_JOIN_SECONDS = 120  # at stop, the start's embedding and router warm-up may finish this long
message_log = logging.getLogger(MESSAGES_LOGGER)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
# A worker gets this much longer than a method's budget before its waiter gives up on it.
WORKER_GRACE_SECONDS = 5.0
LOOP_READ_NODES = 5_000  # a get or describe with more parts than this is read in a worker thread


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
    clients: str | None = None  # a clients file (lines PUBLIC_KEY ROLE NAME): only those keys connect

    llm: str = "embedded"
    approval: str = "auto"  # or "manual": synthesized methods wait for `batos cycles approve`
    max_iterations: int = 5
    cycle_wait_seconds: float = 1800.0  # how long a client's send waits for the cycle it started
    max_turns: int = 3  # turns in one `ask` dialogue
    max_question_chars: int = 4000
    memory_max_bytes: int = 20 * 1024**2  # a file memory takes
    memory_parse_seconds: float = 60.0  # parsing one such file, in a confined child

    # limits (see README, "Limits"); each answers with a clear code and writes nothing
    max_slot_bytes: int = 1024**2
    max_value_depth: int = 32
    max_reply_bytes: int = protocol.MAX_MESSAGE_SIZE
    max_source_bytes: int = 64 * 1024
    max_write_bytes: int = 8 * 1024**2
    max_cycles_per_minute: int = 10
    max_open_cycles: int = 64
    max_open_cycles_per_client: int = 16  # so one client cannot fill max_open_cycles alone
    sandbox_workers: int = 0  # 0: as many as `workers`
    sandbox_memory_bytes: int = 1024**3

    def sandbox_limits(self) -> SandboxLimits:
        return SandboxLimits(memory_bytes=self.sandbox_memory_bytes, max_frame=self.max_reply_bytes,
                             max_slot_bytes=self.max_slot_bytes, max_value_depth=self.max_value_depth,
                             max_write_bytes=self.max_write_bytes)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then BATOS_* variables, then ``overrides`` that are not None."""
        return settings_from_env(cls, environ=environ, **overrides)


class UVM:
    """Opens the image, runs workers and the bridge, and shuts everything down in order."""

    def __init__(self, settings: Settings, on_ready: Callable[[str], None] | None = None):
        self.settings = settings
        self.on_ready = on_ready
        self.image: Image | None = None
        self.pool: WorkerPool | None = None
        self.bridge: Bridge | None = None
        self.sandbox = SandboxPool(settings.sandbox_workers or settings.workers, settings.sandbox_limits())
        self.dispatcher = Dispatcher(self.sandbox, method_budget=settings.method_budget,
                                     max_source_bytes=settings.max_source_bytes)
        self.cycle_starts = CycleStarts(settings.max_cycles_per_minute, settings.max_open_cycles,
                                        settings.max_open_cycles_per_client)
        self.core: CognitiveCore | None = None
        self.models: ModelService | None = None
        self.cycles: CycleService | None = None
        self.mind: MindService | None = None
        self.memory: MemoryService | None = None
        self.router: Router | None = None
        self._embeddings_loader: threading.Thread | None = None
        self.embedder = Embedder()
        self._reader: tuple[transaction.TransactionManager, Any] | None = None
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
        if self.settings.approval not in ("auto", "manual"):
            raise ConfigurationError(f"BATOS_APPROVAL must be auto or manual, not {self.settings.approval!r}")
        llm_settings = LLMSettings.from_env()
        CognitiveCore.check(self.settings.llm, llm_settings)  # a bad configuration touches nothing
        if self.settings.max_turns < 1 or self.settings.max_question_chars < 1:
            raise ConfigurationError("BATOS_MAX_TURNS and BATOS_MAX_QUESTION_CHARS must be at least 1")
        try:
            principals = read_clients(self.settings.clients) if self.settings.clients else None
        except ClientsFileError as exc:
            raise ConfigurationError(f"BATOS_CLIENTS: {exc}") from None
        self.image = open_image(self.settings.image, furnishings=(CODEX, EXEMPLARS, CONVERSATIONS, KNOWLEDGE_CATALOG))
        serve_task = None
        try:
            self.core = CognitiveCore(self.image.db, self.settings.llm, llm_settings,
                                      scratch=self._side_folder("scratch"))
            uploads = Uploads(self._side_folder("uploads"))
            uploads.clean_stale()
            self.models = ModelService(self.core, uploads)
            self.memory = MemoryService(self.image.db, self.embedder, uploads,
                                        MemoryPolicy(max_bytes=self.settings.memory_max_bytes,
                                                     parse_seconds=self.settings.memory_parse_seconds))
            self.sandbox.start()
            runner = CycleRunner(self.image.db, self._generate_for_cycle, CyclePolicy(
                max_iterations=self.settings.max_iterations, approval=self.settings.approval,
                max_source_bytes=self.settings.max_source_bytes, verify_seconds=self.settings.method_budget),
                model_name=lambda: self.core.stats().get("model", self.settings.llm), sandbox=self.sandbox,
                generate_many=self._generate_many_for_cycle, experts=self._experts_when_ready,
                choose_persona=lambda brief: writer_for(brief, self.router),
                recall=lambda mission, owner: self.memory.recall(mission, "documents", allowed=documents_of(owner)))
            self.cycles = CycleService(runner, wait_seconds=self.settings.cycle_wait_seconds)
            self.router = Router(self.embedder, lambda: runner.read(exemplars_of), self._break_route_tie)
            self.mind = MindService(self.cycles, SynapticCycle(runner, self.embedder, recall=self.memory.recall), self.router, self.embedder,
                                    MindPolicy(max_turns=self.settings.max_turns,
                                               max_question_chars=self.settings.max_question_chars),
                                    check_model=self.core.check_available, known_experts=self.core.expert_names,
                                    remember=self.memory.remember)
            self.dispatcher.synthesize_missing = self.settings.llm != "none"
            self.pool = WorkerPool(self.image.db, self.settings.workers)
            self.pool.start()
            reader_manager = transaction.TransactionManager(explicit=True)
            self._reader = (reader_manager, self.image.db.open(transaction_manager=reader_manager))
            self.bridge = Bridge(
                self.settings.endpoint, self.handle,
                max_message_size=self.settings.max_message_size,
                curve_secret_key=self.settings.curve_secret_key,
                principals=principals,
                max_reply_bytes=self.settings.max_reply_bytes,
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
            threading.Thread(target=self.core.awaken, name="batos-awaken", daemon=True).start()
            self._embeddings_loader = threading.Thread(target=self._load_embeddings, name="batos-embeddings",
                                                       daemon=True)
            self._embeddings_loader.start()
            if self.settings.llm != "none":
                self.cycles.start()  # without a model, interrupted cycles wait for a UVM that has one
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
        if self._embeddings_loader is not None:
            # torch still embedding on a thread the interpreter tears down aborts the process (-6)
            self._embeddings_loader.join(EMBEDDINGS_JOIN_SECONDS)
        for name, close in (
            ("workers", lambda: self.pool and self.pool.stop(self.settings.drain_seconds)),
            ("bridge", lambda: self.bridge and self.bridge.close()),
            ("cycles", lambda: self.cycles and self.cycles.close()),
            ("memory", lambda: self.memory and self.memory.close()),
            ("sandbox", self.sandbox.close),
            ("language model", lambda: self.core and self.core.close()),
            ("reader", lambda: self._reader and self._reader[1].close()),
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
        """Serve one request; never raises. BatOS's own failures carry their wire code; anything
        else is ``internal``, logged with its traceback."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            if self._stopping.is_set():
                raise ProtocolError(Code.SHUTTING_DOWN, "the UVM is shutting down")
            result = await self._perform(Context(request, emit))
            reply = protocol.ok_reply(request.id, result)
        except BatosError as exc:
            outcome = exc.code
            reply = protocol.error_reply(request.id, exc.code, str(exc))
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

    async def _perform(self, context: Context) -> Any:
        """Route the request to the service protocol.OPS names for its op."""
        op = context.request.op
        if protocol.OPS[op].admin and not context.request.principal.is_admin:
            raise Forbidden(f"{op} needs the admin role; {context.request.principal.name} is a {context.request.principal.role}")
        service = {"kernel": self, "image": self, "cycles": self.cycles, "models": self.models,
                   "mind": self.mind, "memory": self.memory}[protocol.OPS[op].service]
        return await getattr(service, f"op_{op}")(context.request.fields, context)

    # --- the kernel's own ops -------------------------------------------------------------------

    async def op_ping(self, fields: dict, context: Context) -> dict:
        return {"pong": True, "version": __version__, "pid": os.getpid()}

    async def op_stats(self, fields: dict, context: Context) -> dict:
        return await self.pool.run(self.stats, writes=False)

    async def op_pack(self, fields: dict, context: Context) -> dict:
        await asyncio.to_thread(self.image.db.pack, days=fields.get("days", 0))
        return {"packed": True, "size": self.image.db.getSize()}

    # --- the image: dispatch in a worker's transaction ------------------------------------------

    async def _image_op(self, fields: dict, context: Context) -> Any:
        request = context.request
        operation = functools.partial(getattr(self.dispatcher, f"op_{request.op}"), fields=fields,
                                      principal=request.principal)
        result = await self.pool.run(operation, writes=request.op in protocol.WRITING_OPS,
                                     timeout=self.settings.method_budget + WORKER_GRACE_SECONDS)
        if isinstance(result, ServiceCall) and result.service == SYNTHESIZE:
            return await self._synthesize(result, context)
        if isinstance(result, ServiceCall):
            if result.service != services.INFER:
                raise ProtocolError(Code.NOT_UNDERSTOOD, f"no service {result.service!r} in this UVM")
            return await self.models.infer(result.args, result.kwargs, context,
                                           bound_expert=(result.options or {}).get("bound_expert"))
        return result

    op_set = op_send = op_define = op_methods = op_method_rollback = _image_op

    async def op_get(self, fields: dict, context: Context) -> Any:
        return await self._read(functools.partial(self.dispatcher.op_get, principal=context.request.principal), fields)

    async def op_describe(self, fields: dict, context: Context) -> Any:
        return await self._read(functools.partial(self.dispatcher.op_describe, principal=context.request.principal), fields)

    async def _read(self, read: Callable[..., Any], fields: dict) -> Any:
        """A read of the kernel's own, on the event loop when it is small (LOOP_READ_NODES parts at
        most), else in a worker thread, so a large value never holds up other clients' messages."""
        try:
            return self._read_here(functools.partial(read, fields=fields, max_nodes=LOOP_READ_NODES))
        except ValueTooLarge:
            return await self.pool.run(functools.partial(read, fields=fields), writes=False,
                                       timeout=self.settings.method_budget + WORKER_GRACE_SECONDS)

    def _read_here(self, read: Callable[[Any], Any]) -> Any:
        """A read of the kernel's own (no method runs) on the event loop, in a read-only transaction
        of a connection of its own: no hop to a worker thread and back for the commonest reads."""
        manager, connection = self._reader
        manager.begin()
        try:
            return read(connection.root())
        finally:
            manager.abort()

    async def _synthesize(self, call: ServiceCall, context: Context) -> Any:
        """A message nothing understands: start (or join) a cycle, wait for it, then answer."""
        request = context.request
        selector, *args = call.args
        options = call.options or {}
        found = await self.cycles.missing_method(
            call.receiver, selector, args, call.kwargs, options.get("intent"), options.get("examples"),
            options.get("wait", True), functools.partial(self.cycle_starts.allow, request.peer), context.emit,
            opened_by=request.peer.hex(), owner=request.principal.key)
        if found["state"] == "queued":
            return {"cycle": found["id"], "state": "queued"}
        if found["state"] == "FAILED":
            # the reason quotes the opener's arguments and examples: theirs to read
            reason = (found["reason"] if request.principal.may_see(found.get("owner"))
                      else "it failed; it was opened by another user, who can see why")
            raise ProtocolError(Code.SYNTHESIS_FAILED, f"cycle {found['id']}: {reason}")
        if found["state"] == "AWAITING_APPROVAL":
            raise ProtocolError(Code.AWAITING_APPROVAL, f"cycle {found['id']} wrote {selector}; approve it with `batos cycles approve {found['id']}`")
        fields = {k: v for k, v in request.fields.items() if k not in ("intent", "examples", "wait")}
        return await self._image_op(fields, Context(Request(request.id, "send", fields, request.peer, request.principal),
                                                    context.emit))

    # --- cognitive cycles -------------------------------------------------------------------------

    def _generate_for_cycle(self, messages, temperature: float = 0.0, seed: int | None = None, samples: int = 1,
                            expert: str | None = None, max_new_tokens: int | None = None, stream=None,
                            prose: bool = False) -> list[str]:
        """The cycle runner's model call (its thread; no transaction open): the answer(s)."""
        self._wait_for_model()
        generation = self.core.backend.generate(messages, expert=expert, temperature=temperature, seed=seed,
                                                samples=samples, stream=stream, prose=prose,
                                                max_new_tokens=max_new_tokens or self.core.settings.max_new_tokens)
        return [generation.text, *generation.alternatives]

    def _generate_many_for_cycle(self, conversations, expert: str | None = None, max_new_tokens: int | None = None,
                                 temperature: float = 0.0, seed: int | None = None, prose: bool = False) -> list[str]:
        """Independent generations in one batched call (the facets of a plan)."""
        self._wait_for_model()
        return [g.text for g in self.core.backend.generate_many(
            conversations, expert=expert, temperature=temperature, seed=seed, prose=prose,
            max_new_tokens=max_new_tokens or self.core.settings.max_new_tokens)]

    def _experts_when_ready(self) -> set[str]:
        """The experts the model can apply, once it is loaded (none if it never will be)."""
        try:
            self.core.wait_ready(MODEL_WAIT_SECONDS)
        except ModelUnavailable:
            return set()
        return self.core.expert_names()

    def _wait_for_model(self) -> None:
        try:
            self.core.wait_ready(MODEL_WAIT_SECONDS)
        except ModelUnavailable as exc:
            raise BackendError(str(exc), transient=False) from None

    def _break_route_tie(self, question: str) -> str | None:
        """The model's one-word choice of archetype, if a model is ready now (a route never waits
        for one to load)."""
        if self.core.state != "ready":
            return None
        return archetype_in(self.core.generate(tie_break_prompt(question), max_new_tokens=4, timeout=0).text)

    def _load_embeddings(self) -> None:
        """Load the embedder and warm the router at start, off the event loop: the first route
        answers as fast as later ones."""
        try:
            self.embedder.load()
            if self.router is not None:
                self.router.warm()
        except EmbeddingsUnavailable as exc:
            log.error("routing and the quality gate need the embedding model: %s", exc)
        except Exception:
            log.exception("warming the router failed; the first route will embed the exemplars")

    def _side_folder(self, kind: str) -> str:
        """``IMAGE.fs.KIND/`` beside a file image; a temporary folder for other storages."""
        path = normalize_uri(self.settings.image).file_path
        return f"{path}.{kind}" if path else tempfile.mkdtemp(prefix=f"batos-{kind}-")

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
            "llm": self.core.stats() if self.core else {"state": "off"},
            "sandbox": self.sandbox.stats(),
            "embeddings": self.embedder.stats(),
            "router": self.router.stats() if self.router is not None else None,
        }
