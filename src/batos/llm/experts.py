"""The three tiers of expert (LoRA adapter) memory.

cold: known by name, weights only in the image's blob file. warm: the weights' bytes in RAM, least
recently used first out once a byte budget is exceeded. hot: loaded into the model, at most
``max_hot``; activating one more evicts the least recently used. Moving up is lazy (on use);
every eviction is complete (the backend deletes the adapter and frees its memory).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

Install = Callable[[str, dict, bytes], None]
Remove = Callable[[str], None]


class UnknownExpertError(KeyError):
    def __init__(self, name: str, known: list[str]):
        self.name = name
        super().__init__(f"no expert named {name!r} (known: {', '.join(known) or 'none'})")

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class ColdExpert:
    name: str
    config: dict
    weights_path: Path
    size: int


class ExpertTiers:
    """Moves experts between cold, warm and hot for one model (see module docstring)."""

    def __init__(self, install: Install, remove: Remove, max_hot: int, warm_budget: int):
        self._install, self._remove = install, remove
        self.max_hot, self.warm_budget = max_hot, warm_budget
        self.cold: dict[str, ColdExpert] = {}
        self.warm: OrderedDict[str, bytes] = OrderedDict()
        self.hot: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.RLock()

    def know(self, expert: ColdExpert) -> None:
        """Register (or re-register) an expert; a changed one drops out of the upper tiers."""
        with self._lock:
            previous = self.cold.get(expert.name)
            self.cold[expert.name] = expert
            if previous is not None and previous != expert:
                self.evict(expert.name)

    def tier_of(self, name: str) -> str:
        if name in self.hot:
            return "hot"
        if name in self.warm:
            return "warm"
        return "cold"

    def tiers(self) -> dict[str, str]:
        with self._lock:
            return {name: self.tier_of(name) for name in sorted(self.cold)}

    @property
    def warm_bytes(self) -> int:
        return sum(len(b) for b in self.warm.values())

    def warm_up(self, name: str) -> bytes:
        """The expert's weights in RAM (reading the blob file if it was cold)."""
        with self._lock:
            if name not in self.cold:
                raise UnknownExpertError(name, sorted(self.cold))
            if name in self.warm:
                self.warm.move_to_end(name)
                return self.warm[name]
            data = self.cold[name].weights_path.read_bytes()
            self.warm[name] = data
            while self.warm_bytes > self.warm_budget and len(self.warm) > 1:
                dropped, _ = self.warm.popitem(last=False)
                log.info("expert %s left the warm tier (byte budget %d)", dropped, self.warm_budget)
            return data

    def activate(self, name: str) -> None:
        """Make ``name`` hot, evicting the least recently used hot expert if needed."""
        with self._lock:
            if name in self.hot:
                self.hot.move_to_end(name)
                return
            data = self.warm_up(name)
            while len(self.hot) >= self.max_hot:
                self.cool(next(iter(self.hot)))
            self._install(name, self.cold[name].config, data)
            self.hot[name] = None
            log.info("expert %s is hot (%d/%d)", name, len(self.hot), self.max_hot)

    def cool(self, name: str) -> None:
        """Take ``name`` out of the model; it stays warm."""
        with self._lock:
            if name in self.hot:
                self._remove(name)
                del self.hot[name]
                log.info("expert %s left the hot tier", name)

    def evict(self, name: str) -> None:
        """Back to cold: out of the model and out of RAM."""
        with self._lock:
            self.cool(name)
            self.warm.pop(name, None)
