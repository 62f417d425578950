"""The child process of batos.mind.sandbox: limit itself, then check one candidate.

Reads one JSON job on stdin and prints one JSON verdict line on stdout.
"""

from __future__ import annotations

import ctypes
import json
import resource
import sys
import traceback
from typing import Any

from batos.mind.sandbox import ADDRESS_SPACE_BYTES, CPU_SECONDS, OPEN_FILES

CLONE_NEWNET = 0x40000000


def limit_myself() -> list[str]:
    """Apply the resource limits; return notes on what could not be applied."""
    notes = []
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS + 1))
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES))
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))
    try:
        if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) != 0:
            notes.append("no separate network namespace here")
    except (OSError, AttributeError):
        notes.append("no separate network namespace here")
    return notes


def plain(value: Any) -> Any:
    from batos.image.values import to_plain

    return to_plain(value)


def check(job: dict) -> dict:
    from batos.image import traits  # noqa: F401  (registers the trait primitives)
    from batos.image.genesis import TRAIT_PRIMITIVES
    from batos.image.objects import METHOD_FILENAME_PREFIX, Method, UvmObject
    from batos.image.restricted import compile_method

    stand_in_traits = UvmObject(**{selector: Method(selector, origin="primitive", primitive=name)
                                   for selector, name in TRAIT_PRIMITIVES.items()})

    selector = job["selector"]
    try:
        function = compile_method(selector, job["source"], f"{METHOD_FILENAME_PREFIX}{selector} candidate>")
    except SyntaxError as exc:
        return {"ok": False, "message": f"RestrictedPython refused the candidate: {exc}"}
    results = []
    for number, example in enumerate(job["examples"] or [{}], start=1):
        receiver = UvmObject(parents=[stand_in_traits], **{**job["slots"], **example.get("slots", {})})
        if job.get("oid"):
            receiver._p_oid = int(job["oid"], 16).to_bytes(8, "big")
        try:
            result = function(receiver, *example.get("args", []), **example.get("kwargs", {}))
        except Exception as exc:
            frame = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(METHOD_FILENAME_PREFIX)]
            where = f" at line {frame[-1].lineno}" if frame else ""
            return {"ok": False, "message": f"example {number}: {type(exc).__name__}: {exc}{where}", "results": results}
        got = plain(result)
        results.append({"example": number, "result": got})
        if "result" in example and got != example["result"]:
            return {"ok": False, "results": results,
                    "message": f"example {number}: returned {got!r}, expected {example['result']!r}"}
        for slot, expected in (example.get("after") or {}).items():
            actual = plain(receiver._slots.get(slot))
            if actual != expected:
                return {"ok": False, "results": results,
                        "message": f"example {number}: afterwards slot {slot!r} is {actual!r}, expected {expected!r}"}
    return {"ok": True, "message": f"{len(results)} example(s) passed", "results": results}


def main() -> None:
    job = json.loads(sys.stdin.read())
    notes = limit_myself()
    verdict = check(job)
    verdict["notes"] = notes
    sys.stdout.write(json.dumps(verdict, default=repr) + "\n")  # the verdict is this process's output


if __name__ == "__main__":
    main()
