"""The sandbox: the boundary around code stored in the image.

Stored methods (hand-defined or synthesized) run only in worker processes that hold no image
connection, no files and no network (:mod:`.child`, :mod:`.confine`), kept warm by a pool
(:mod:`.pool`). The UVM gives a method capabilities, not objects, and applies its writes itself
after checking them (:mod:`.host`). Candidates are verified the same way (:mod:`.verify`).
RestrictedPython (:mod:`.restricted`) and the Guardian are layers inside this boundary.
"""


from __future__ import annotations

import importlib
from typing import Any

# Imported on first use, so that a worker (which imports batos.sandbox.child) loads none of the
# image's modules: a smaller process forks faster, and holds less for an escape to use.
_EXPORTS = {"MethodError": "host", "MethodTimeout": "host", "SandboxUnavailable": "host", "run_method": "host",
            "SandboxLimits": "pool", "SandboxPool": "pool"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"batos.sandbox.{_EXPORTS[name]}"), name)
