"""Per-client limits the kernel keeps in memory (not in the image)."""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable

from batos.errors import RateLimited

WINDOW_SECONDS = 60.0


class CycleStarts:
    """How many cycles each client (by identity, or without identities by routing identity) may start
    per minute, how many it may have open at once, and how many may be open in all. A client
    joining a cycle that is already open starts nothing."""

    def __init__(self, per_minute: int, max_open: int, max_open_per_client: int | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self.max_open = max_open
        self.max_open_per_client = max_open_per_client or max_open
        self.clock = clock
        self._starts: dict[bytes, collections.deque] = {}
        self._lock = threading.Lock()

    def allow(self, peer: bytes, open_cycles: int, own_open: int = 0) -> None:
        """Record one start by ``peer`` (which has ``own_open`` of the ``open_cycles``);
        RateLimited (recording nothing) when over a limit."""
        if own_open >= self.max_open_per_client:
            raise RateLimited(f"this client has {own_open} cycles open, the most BATOS_MAX_OPEN_CYCLES_PER_CLIENT "
                              "allows; wait for some to finish")
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
