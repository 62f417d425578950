"""Workers: threads that each own one ZODB connection and one TransactionManager.

A job is a function of a connection's root. It runs inside one transaction of its worker; a
write conflict aborts and reruns it, with capped, jittered exponential backoff. A job whose waiter
gave up (its time ran out) is aborted instead of committed, so a reply of ``ok`` always means
committed and an error reply means nothing was written.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import transaction
import ZODB

from batos.errors import BatosError
from batos.image.transactions import ConflictRetriesExhausted, RetryPolicy, run_in_transaction  # noqa: F401

log = logging.getLogger(__name__)

JobFunction = Callable[[Any], Any]  # called with the connection's root


class JobAbandoned(BatosError):
    """The waiter stopped waiting before the job finished; the job's writes were aborted."""

    code = "timeout"

    def __init__(self, message: str = "the request did not finish in time; nothing was written"):
        super().__init__(message)


@dataclass
class Job:
    fn: JobFunction
    writes: bool
    future: asyncio.Future
    state: str = "queued"  # queued -> running -> committing | abandoned -> done
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claim_commit(self) -> bool:
        """True when the job may commit; after this the waiter cannot abandon it."""
        with self.lock:
            if self.state == "abandoned":
                return False
            self.state = "committing"
            return True

    def abandon(self) -> bool:
        """Stop waiting; True if the job will not commit (False: a commit is already under way)."""
        with self.lock:
            if self.state == "committing":
                return False
            self.state = "abandoned"
            return True

    def deliver(self, result: Any, error: BaseException | None) -> None:
        """Resolve the waiter's future (event-loop thread only); abandoned jobs have none."""
        if self.future.done() or self.state == "abandoned":
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


_STOP = object()


class WorkerPool:
    """A fixed number of worker threads serving jobs from one queue (see module docstring)."""

    def __init__(self, db: ZODB.DB, size: int = 4, retry: RetryPolicy | None = None):
        if size < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.db = db
        self.size = size
        self.retry = retry or RetryPolicy()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._busy_lock = threading.Lock()
        self.conflicts = 0
        self.max_threads = size * 2
        # Finished jobs wait here for the event loop; one wake-up delivers a whole batch.
        self._finished: collections.deque = collections.deque()
        self._wakeup_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> None:
        thread = threading.Thread(target=self._serve, name=f"batos-worker-{len(self._threads)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def run(self, fn: JobFunction, writes: bool, timeout: float | None = None) -> Any:
        """Run ``fn(root)`` in a worker's transaction and return its result.

        With ``timeout``, raises JobAbandoned (and the job's transaction is aborted, not
        committed) when the job has not finished in time.
        """
        self._loop = loop = asyncio.get_running_loop()
        job = Job(fn, writes, loop.create_future())
        self._queue.put(job)
        if timeout is None:
            return await job.future
        expiry = loop.call_later(timeout, self._expire, job)
        try:
            return await job.future
        finally:
            expiry.cancel()

    def _expire(self, job: Job) -> None:
        if job.future.done() or not job.abandon():
            return  # finished, or committing: the result is on its way
        job.future.set_exception(JobAbandoned())
        self._replace_stuck_worker(job)

    def _finish(self, job: Job, result: Any = None, error: BaseException | None = None) -> None:
        """Hand a finished job to the event loop (worker thread)."""
        self._finished.append((job, result, error))
        if not self._wakeup_pending:
            self._wakeup_pending = True
            try:
                self._loop.call_soon_threadsafe(self._deliver_finished)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                pass

    def _deliver_finished(self) -> None:
        self._wakeup_pending = False
        while self._finished:
            job, result, error = self._finished.popleft()
            job.deliver(result, error)

    def _replace_stuck_worker(self, job: Job) -> None:
        # A running job may be stuck in C code that no budget can interrupt: keep the pool's
        # capacity by starting another worker, up to a bound.
        alive = [t for t in self._threads if t.is_alive()]
        self._threads = alive
        if job.state == "abandoned" and len(alive) < self.max_threads:
            log.warning("a job outlived its time budget; starting an extra worker (%d alive)", len(alive) + 1)
            self._spawn()

    def _serve(self) -> None:
        manager = transaction.TransactionManager(explicit=True)
        connection = self.db.open(transaction_manager=manager)
        try:
            while True:
                job = self._queue.get()
                if job is _STOP:
                    return
                with self._busy_lock:
                    self._busy += 1
                try:
                    self._run(job, connection, manager)
                finally:
                    with self._busy_lock:
                        self._busy -= 1
        finally:
            try:
                connection.close()
            except Exception:
                log.exception("closing a worker's connection failed")

    def _run(self, job: Job, connection, manager: transaction.TransactionManager) -> None:
        with job.lock:
            if job.state == "abandoned":
                self._finish(job, error=JobAbandoned())
                return
            job.state = "running"

        def conflicted() -> None:
            self.conflicts += 1
            with job.lock:
                if job.state == "committing":
                    job.state = "running"

        try:
            result = run_in_transaction(manager, lambda: job.fn(connection.root()), self.retry, writes=job.writes,
                                        may_commit=job.claim_commit, on_conflict=conflicted)
        except BaseException as exc:
            self._finish(job, error=exc)
            return
        if job.state == "abandoned":
            self._finish(job, error=JobAbandoned())
        else:
            self._finish(job, result=result)

    def stop(self, timeout: float = 10.0) -> None:
        """Let queued jobs finish, then end every worker (waiting at most ``timeout`` in all)."""
        for _ in self._threads:
            self._queue.put(_STOP)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            log.warning("workers still busy at shutdown, their transactions are left uncommitted: %s", stuck)
