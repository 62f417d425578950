"""Background asyncio tasks that are neither lost nor silent."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable

log = logging.getLogger(__name__)


def spawn(tasks: set[asyncio.Task], awaitable: Awaitable, what: str) -> asyncio.Task:
    """Run ``awaitable`` as a task held in ``tasks`` until it ends; a failure is logged (naming
    ``what``) and goes no further, so it can neither vanish nor stop the event loop."""
    task = asyncio.ensure_future(awaitable)
    tasks.add(task)

    def ended(done: asyncio.Task) -> None:
        tasks.discard(done)
        if not done.cancelled() and done.exception() is not None:
            log.error("%s failed", what, exc_info=done.exception())

    task.add_done_callback(ended)
    return task
