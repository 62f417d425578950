"""The cycle service: cognitive cycles as the rest of BatOS sees them.

It owns the :class:`~batos.mind.cycle.CycleRunner`, the thread that drives cycles one at a time
(restarted if it ever dies), its queue, and the waiting clients. A client that waits for a cycle
holds no thread: it awaits an asyncio future that the cycle thread completes, for at most
``wait_seconds``. Listing, showing, approving and pruning cycles need no language model.
Every failure inside the service is logged and contained; the service keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Any, Awaitable, Callable

from zope.interface import implementer

from batos.errors import BatosError, NotFound
from batos.image.protection import visible_to
from batos.mind.cycle import FINISHED, CycleRunner, summary
from batos.mind.interfaces import ICycleService
from batos.principals import OWNER, Principal
from batos.tasks import spawn

log = logging.getLogger(__name__)

STOPPED = ("COMPLETE", "FAILED", "AWAITING_APPROVAL")
OnState = Callable[[dict], Awaitable[None]]
_STOP = object()


class CycleWaitTimeout(BatosError):
    code = "timeout"


@implementer(ICycleService)
class CycleService:
    """See the module docstring and ICycleService."""

    def __init__(self, runner: CycleRunner, wait_seconds: float = 1800.0):
        self.runner = runner
        self.wait_seconds = wait_seconds
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    # --- the cycle thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the cycle thread and resume every cycle a crash interrupted."""
        self._ensure_thread()
        for cycle_id in self.runner.unfinished():
            log.info("resuming cycle %s", cycle_id)
            self.enqueue(cycle_id)

    def enqueue(self, cycle_id: str) -> None:
        self._ensure_thread()
        self._queue.put(cycle_id)

    def _ensure_thread(self) -> None:
        if self._closed or (self._thread is not None and self._thread.is_alive()):
            return
        if self._thread is not None:
            log.error("the cycle thread had stopped; starting it again")
        self._thread = threading.Thread(target=self._serve, name="batos-cycles", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            cycle_id = self._queue.get()
            if cycle_id is _STOP:
                return
            self.run_one(cycle_id)

    def run_one(self, cycle_id: str) -> None:
        """Drive one cycle; an unforeseen error fails it (and if even that fails, its waiters are
        still released). Never raises."""
        try:
            self.runner.run(cycle_id)
        except Exception as exc:
            log.exception("cycle %s stopped with an error", cycle_id)
            try:
                self.runner.abandon(cycle_id, f"internal error: {type(exc).__name__}: {exc}")
            except Exception:
                log.exception("cycle %s could not be marked FAILED", cycle_id)

    def close(self) -> None:
        self._closed = True
        self._queue.put(_STOP)
        self.runner.close()

    # --- waiting, without a thread ---------------------------------------------------------------

    async def missing_method(self, receiver: str, selector: str, args: list, kwargs: dict,
                             intent: str | None, examples: list | None, wait: bool,
                             may_start: Callable[[int, int], None] | None, on_state: OnState,
                             opened_by: str = "", owner: str | None = None) -> dict[str, Any]:
        """Start (or join) the cycle for ``receiver``'s ``selector``; unless ``wait`` is false,
        wait for it to stop, telling ``on_state`` of each state. The cycle's summary. A new cycle
        belongs to ``owner`` (a principal's key) when given."""
        cycle_id = await asyncio.to_thread(self.runner.start_or_join, receiver, selector, args, kwargs,
                                           intent, examples, may_start, opened_by, owner)
        if not wait:
            self.enqueue(cycle_id)
            return {"id": cycle_id, "state": "queued"}
        return await self.run_and_wait(cycle_id, on_state)

    async def run_and_wait(self, cycle_id: str, on_state: OnState) -> dict[str, Any]:
        """Have the cycle thread drive ``cycle_id`` and await its stop (telling ``on_state`` of each
        state); the cycle's summary. CycleWaitTimeout after ``wait_seconds``."""
        loop = asyncio.get_running_loop()
        stopped: asyncio.Future = loop.create_future()

        def on_finish(changed: str, state: str) -> None:
            if changed == cycle_id:
                loop.call_soon_threadsafe(_settle, stopped, state)

        def on_move(changed: str, state: str) -> None:
            if changed == cycle_id:
                loop.call_soon_threadsafe(lambda: spawn(self._tasks, on_state({"cycle": cycle_id, "state": state}),
                                                        "sending a cycle event"))

        self.runner.add_listener(on_finish, on_finish=True)
        self.runner.add_listener(on_move)
        try:
            self.enqueue(cycle_id)
            await on_state({"cycle": cycle_id, "state": "started"})
            try:
                await asyncio.wait_for(stopped, self.wait_seconds)
            except asyncio.TimeoutError:
                raise CycleWaitTimeout(f"cycle {cycle_id} is still running after {self.wait_seconds:g} s; "
                                       f"see `batos cycles show {cycle_id}`") from None
        finally:
            self.runner.remove_listener(on_finish)
            self.runner.remove_listener(on_move)
        return await self.show(cycle_id)

    # --- the ops ----------------------------------------------------------------------------------

    async def op_cycles_list(self, fields: dict, context: Any = None) -> list[dict]:
        every = fields.get("all", True)
        principal = context.request.principal if context is not None else OWNER

        def listing(root) -> list[dict]:
            cycles = [summary(c) for c in (root.get("active_cycles") or {}).values() if visible_to(c, principal)]
            return sorted((c for c in cycles if every or c["state"] not in FINISHED), key=lambda c: c["created"])
        return await asyncio.to_thread(self.runner.read, listing)

    async def op_cycle_show(self, fields: dict, context: Any = None) -> dict:
        return await self.show(fields["cycle"], context.request.principal if context is not None else OWNER)

    async def show(self, cycle_id: str, principal: Principal = OWNER) -> dict:
        """The cycle's summary with its details; NotFound when there is none, or when it answers in
        a conversation ``principal`` may not see."""
        def find(root) -> dict:
            cycle = (root.get("active_cycles") or {}).get(cycle_id)
            if cycle is None or not visible_to(cycle, principal):
                raise NotFound(f"no cycle {cycle_id}")
            return summary(cycle, detail=True)
        return await asyncio.to_thread(self.runner.read, find)

    async def op_cycle_decide(self, fields: dict, context: Any = None) -> dict:
        await self.show(fields["cycle"], context.request.principal if context is not None else OWNER)  # not_found first
        state = await asyncio.to_thread(self.runner.decide, fields["cycle"], fields["approve"], fields.get("digest"))
        return {"cycle": fields["cycle"], "state": state}

    async def op_cycles_prune(self, fields: dict, context: Any = None) -> dict:
        days = fields.get("days", 0)
        if days < 0:
            raise BatosError("days must not be negative", code="bad_request")
        return {"pruned": await asyncio.to_thread(self.runner.prune, days * 86400)}


def _settle(future: asyncio.Future, state: str) -> None:
    if not future.done():
        future.set_result(state)
