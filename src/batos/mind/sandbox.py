"""Verifying a candidate method in a separate, resource-limited process before it is installed.

The child gets the candidate's source, a snapshot of the target's slots (plain data) and the
examples to check; it sets CPU-time, address-space and open-file limits, leaves the network
namespace where the OS allows, compiles the source with RestrictedPython exactly as the image
would, and runs each example on a fresh copy of the snapshot. The parent enforces a wall-clock
limit too. Only a verdict comes back; nothing the candidate does can reach the image.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

CPU_SECONDS = 5
WALL_SECONDS = 20.0
ADDRESS_SPACE_BYTES = 1024 * 1024 * 1024
OPEN_FILES = 64


@dataclass
class Verdict:
    ok: bool
    message: str
    results: list[dict[str, Any]] = field(default_factory=list)


def verify(source: str, selector: str, slots: dict[str, Any], examples: list[dict[str, Any]],
           wall_seconds: float = WALL_SECONDS, oid: str | None = None) -> Verdict:
    """Run ``examples`` against the candidate in a child process; the verdict says what failed.

    An example is ``{"slots": {...}, "args": [...], "kwargs": {...}, "result": ..., "after": {...}}``;
    every key is optional. Without ``result`` only "runs without raising" is checked. The stand-in
    receiver carries ``oid`` and inherits the trait primitives, as the real one does.
    """
    job = json.dumps({"source": source, "selector": selector, "slots": slots, "examples": examples, "oid": oid}, default=repr)
    try:
        done = subprocess.run([sys.executable, "-m", "batos.mind.verifier"], input=job, capture_output=True,
                              text=True, timeout=wall_seconds)
    except subprocess.TimeoutExpired:
        return Verdict(False, f"verification ran past {wall_seconds:g} s of wall-clock time (an endless loop?)")
    if done.returncode != 0:
        reason = "it ran out of CPU time" if done.returncode in (-24, 152) else f"the verifier exited {done.returncode}"
        tail = done.stderr.strip().splitlines()[-1:] or [""]
        return Verdict(False, f"verification failed: {reason} {tail[0]}".strip())
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Verdict(False, f"the verifier gave no verdict: {done.stdout[-200:]!r} {done.stderr[-200:]!r}")
    return Verdict(answer["ok"], answer["message"], answer.get("results", []))
