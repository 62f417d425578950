"""Per-client limits the kernel keeps in memory (not in the image)."""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable

from batos.errors import RateLimited

WINDOW_SECONDS = 60.0


class CycleStarts:
    """How many cycles each client (by routing identity) may start per minute, and how many may be
    open at once in all. A client joining a cycle that is already open starts nothing."""

    def __init__(self, per_minute: int, max_open: int, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self.max_open = max_open
        self.clock = clock
        self._starts: dict[bytes, collections.deque] = {}
        self._lock = threading.Lock()

    def allow(self, peer: bytes, open_cycles: int) -> None:
        """Record one start by ``peer``; RateLimited (recording nothing) when over a limit."""
        if open_cycles >= self.max_open:
            raise RateLimited(f"{open_cycles} cycles are open, the most BATOS_MAX_OPEN_CYCLES allows; "
                              "wait for some to finish")
        now = self.clock()
        with self._lock:
            starts = self._starts.setdefault(peer, collections.deque())
            while starts and starts[0] <= now - WINDOW_SECONDS:
                starts.popleft()
            if len(starts) >= self.per_minute:
                wait = starts[0] + WINDOW_SECONDS - now
                raise RateLimited(f"this client started {len(starts)} cycles in the last minute, the most "
                                  f"BATOS_MAX_CYCLES_PER_MINUTE allows; retry in {wait:.0f} s")
            starts.append(now)
            if len(self._starts) > 10_000:  # forget clients that have been quiet for a minute
                for key in [k for k, q in self._starts.items() if not q or q[-1] <= now - WINDOW_SECONDS]:
                    del self._starts[key]
