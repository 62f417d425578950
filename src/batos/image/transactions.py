"""The one way BatOS runs a transaction of its own.

:func:`run_in_transaction` calls a function inside a transaction of the given manager and commits
it; a write conflict (any ``TransientError``) aborts and runs the function again, after a capped,
jittered exponential backoff, at most ``RetryPolicy.max_attempts`` times; then it raises
ConflictRetriesExhausted and nothing is written. Any other exception aborts and propagates. The
function must therefore be safe to run again: it reads what it needs inside the transaction.

A writer that has met a conflict retries alone: until it commits or gives up, every other writer
of this process waits before beginning its next attempt (at most ``GATE_PATIENCE`` seconds, so a
writer that waits on another can never deadlock it). Without that, a writer contending with
several busy ones loses again and again; with it, only writers in other processes can beat it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import transaction
from transaction.interfaces import TransientError

from batos.errors import BatosError

log = logging.getLogger(__name__)
T = TypeVar("T")


class ConflictRetriesExhausted(BatosError):
    code = "conflict"

    def __init__(self, attempts: int):
        self.attempts = attempts
        super().__init__(f"write conflicts persisted through {attempts} attempts; nothing was written")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 25
    base_delay: float = 0.001
    max_delay: float = 0.05

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** attempt))


DEFAULT_POLICY = RetryPolicy()
GATE_PATIENCE = 1.0  # seconds a writer waits for one that is retrying before it goes on anyway


class _RetryGate:
    """Held by the one writer retrying after a conflict; the others pass it before each attempt."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # re-entrant: a retrying writer's nested transactions pass

    def hold(self) -> bool:
        return self._lock.acquire(timeout=GATE_PATIENCE)

    def release(self) -> None:
        self._lock.release()

    def pass_through(self) -> None:
        if self._lock.acquire(timeout=GATE_PATIENCE):
            self._lock.release()


_gate = _RetryGate()


def run_in_transaction(manager: transaction.TransactionManager, fn: Callable[[], T],
                       policy: RetryPolicy = DEFAULT_POLICY, writes: bool = True,
                       may_commit: Callable[[], bool] | None = None,
                       on_conflict: Callable[[], None] | None = None) -> T:
    """``fn()`` in a transaction of ``manager``, committed (see the module docstring).

    With ``writes`` false the transaction is aborted instead of committed. ``may_commit``, asked
    just before committing, can refuse: the transaction is aborted and the result still returned.
    ``on_conflict`` is told of every conflict (for counting).
    """
    holding = False
    try:
        for attempt in range(1, policy.max_attempts + 1):
            if not holding:
                _gate.pass_through()
            manager.begin()
            try:
                result = fn()
                if writes and (may_commit is None or may_commit()):
                    manager.commit()
                else:
                    manager.abort()
                return result
            except TransientError as exc:
                _abort_quietly(manager)
                if on_conflict is not None:
                    on_conflict()
                if attempt == policy.max_attempts:
                    raise ConflictRetriesExhausted(attempt) from exc
                log.debug("write conflict (%s), attempt %d; retrying", exc, attempt)
                holding = holding or _gate.hold()
                time.sleep(policy.delay(attempt))
            except BaseException:
                _abort_quietly(manager)
                raise
        raise AssertionError("unreachable")
    finally:
        if holding:
            _gate.release()


def _abort_quietly(manager: transaction.TransactionManager) -> None:
    try:
        manager.abort()
    except Exception:
        log.exception("aborting a transaction failed")


def read_root(db, fn: Callable[[object], T]) -> T:
    """``fn(root)`` in a read-only transaction of a fresh connection of its own (aborted after,
    so it never waits for, or conflicts with, a writer)."""
    manager = transaction.TransactionManager(explicit=True)
    connection = db.open(transaction_manager=manager)
    manager.begin()
    try:
        return fn(connection.root())
    finally:
        manager.abort()
        connection.close()
