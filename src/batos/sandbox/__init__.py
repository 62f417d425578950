"""The sandbox: the boundary around code stored in the image.

Stored methods (hand-defined or synthesized) run only in worker processes that hold no image
connection, no files and no network (:mod:`.child`, :mod:`.confine`), kept warm by a pool
(:mod:`.pool`). The UVM gives a method capabilities, not objects, and applies its writes itself
after checking them (:mod:`.host`). Candidates are verified the same way (:mod:`.verify`).
RestrictedPython (:mod:`.restricted`) and the Guardian are layers inside this boundary.
"""

from batos.sandbox.host import MethodError, MethodTimeout, SandboxUnavailable, run_method
from batos.sandbox.pool import SandboxLimits, SandboxPool

__all__ = ["MethodError", "MethodTimeout", "SandboxLimits", "SandboxPool", "SandboxUnavailable", "run_method"]
