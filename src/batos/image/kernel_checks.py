"""What the doctor checks in the image's kernel objects (read-only; each problem a sentence).

Attacks on earlier versions planted things that a structural check cannot see: blob files
replaced by links or directories, model and expert files whose bytes no longer match what was
imported, ``parent*`` slots holding something other than a list of objects, cycles pointing at a
state that does not exist, kernel objects stripped of their primitives, slots on ``traits_obj``
that look like a primitive's name (``clone\x00``, ``Clone``), objects with tens of thousands of
slots.
"""

from __future__ import annotations

import itertools
import os
import stat
import unicodedata
from pathlib import Path
from typing import Any, Iterable

from BTrees.OOBTree import OOBTree

from batos.image.blobs import sha256_of_file, verify_bundle
from batos.image.genesis import PSM_STATES, TRAIT_PRIMITIVES
from batos.image.objects import PARENT_SLOT, Method, UvmObject
from batos.image.protection import outside_writes

MAX_SLOTS = 10_000


def blob_file_problem(path: str) -> str | None:
    """Why the committed file of a blob is not a plain regular file, or None."""
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        return f"its file cannot be read ({exc.strerror})"
    if not stat.S_ISREG(mode):
        return "its file is not a regular file (a link, folder or device was put in its place)"
    return None


def parents_problem(obj: UvmObject) -> str | None:
    parents = obj._slots.get(PARENT_SLOT)
    if parents is None:
        return None
    if isinstance(parents, (str, bytes)) or not hasattr(parents, "__iter__") or not all(isinstance(p, UvmObject) for p in parents):
        return f"its {PARENT_SLOT} slot holds {type(parents).__name__} {str(parents)[:60]!r}, not a list of objects"
    return None


def check_kernel(root: Any, objects: Iterable[UvmObject], max_slots: int = MAX_SLOTS) -> list[str]:
    """Every problem with the kernel objects of ``root``, and the ``parent*`` and size of
    ``objects`` (more than ``max_slots`` slots is reported: no object needs that many)."""
    problems = []
    for obj in objects:
        problem = parents_problem(obj)
        if problem:
            problems.append(f"object {_label(obj)}: {problem}")
        if next(itertools.islice(iter(obj._slots.keys()), max_slots, None), None) is not None:
            problems.append(f"object {_label(obj)} has more than {max_slots} slots")
    problems += _traits_problems(root.get("traits_obj"))
    problems += _pllm_problems(root.get("pLLM_obj"))
    problems += _cycle_problems(root)
    return problems


def outside_write_notes(root: Any, shown: int = 10) -> list[str]:
    """Sentences on the slots methods wrote beyond their receiver, arguments and new objects (the
    writes :func:`batos.image.protection.record_outside_writes` kept): how many, and the latest."""
    total, kept = outside_writes(root)
    if not kept:
        return []
    dropped = f" ({total - len(kept)} older ones no longer kept)" if total > len(kept) else ""
    notes = [f"{total} record(s) of slots written by methods outside their receiver and arguments{dropped}; "
             f"the latest {min(shown, len(kept))}:"]
    for write in kept[-shown:]:
        what = (f"{write['more']} more slot(s) of other objects" if "more" in write
                else f"slot {write.get('slot')!r} of {write.get('target')}")
        notes.append(f"  method {write.get('method')!r} sent to {write.get('receiver')} wrote {what} "
                     f"(for {write.get('by')})")
    return notes


def _label(obj: Any) -> str:
    oid = getattr(obj, "_p_oid", None)
    return hex(int.from_bytes(oid, "big")) if oid else "(new)"


def _traits_problems(traits: Any) -> list[str]:
    if not isinstance(traits, UvmObject):
        return ["traits_obj is missing or not an object"]
    problems = []
    for selector, name in TRAIT_PRIMITIVES.items():
        method = traits._slots.get(selector)
        if not (isinstance(method, Method) and method.origin == "primitive" and method.primitive == name):
            problems.append(f"traits_obj is missing its primitive {selector!r}")
    primitives = {_plain_name(selector) for selector in TRAIT_PRIMITIVES}
    for slot in traits._slots.keys():
        if slot not in TRAIT_PRIMITIVES and _plain_name(slot) in primitives:
            problems.append(f"traits_obj has a slot {slot!r} that looks like the primitive {_plain_name(slot)!r}")
    return problems


def _plain_name(name: str) -> str:
    """A slot name as a reader sees it: without what does not print or show, in one case."""
    return unicodedata.normalize("NFKC", "".join(ch for ch in name if ch.isprintable() and not ch.isspace())).casefold()


def _pllm_problems(pllm: Any) -> list[str]:
    if not isinstance(pllm, UvmObject):
        return ["pLLM_obj is missing or not an object"]
    problems = []
    infer = pllm._slots.get("infer_")
    if not (isinstance(infer, Method) and infer.origin == "primitive"):
        problems.append("pLLM_obj is missing its primitive 'infer_'")
    for table in ("model_bundles", "lora_repository"):
        if not isinstance(pllm._slots.get(table), OOBTree):
            problems.append(f"pLLM_obj's {table} is not the kernel's table")
    bundles = pllm._slots.get("model_bundles")
    for name, bundle in (bundles.items() if isinstance(bundles, OOBTree) else ()):
        planted = [f"model {name!r}, file {relative}: {problem}" for relative, blob in bundle.files.items()
                   if (problem := blob_file_problem(blob.committed()))]
        problems += planted or [f"model {name!r}: {p}" for p in verify_bundle(bundle)]
    adapters = pllm._slots.get("lora_repository")
    for name, record in (adapters.items() if isinstance(adapters, OOBTree) else ()):
        problems += _adapter_problems(name, record)
    return problems


def _adapter_problems(name: str, record: Any) -> list[str]:
    slots = getattr(record, "_slots", {})
    blob = slots.get("model_blob")
    try:
        path = blob.committed()
    except Exception as exc:
        return [f"expert {name!r}: its weights blob cannot be read ({type(exc).__name__})"]
    problem = blob_file_problem(path)
    if problem:
        return [f"expert {name!r}: {problem}"]
    if Path(path).stat().st_size != slots.get("size"):
        return [f"expert {name!r}: its weights are {Path(path).stat().st_size} bytes, {slots.get('size')} were imported"]
    if sha256_of_file(path) != slots.get("sha256"):
        return [f"expert {name!r}: its weights differ from the digest recorded at import"]
    return []


def _cycle_problems(root: Any) -> list[str]:
    psm = root.get("psm_prototypes_obj")
    states = {id(psm._slots.get(s)) for s in PSM_STATES} if isinstance(psm, UvmObject) else set()
    problems = []
    for cycle_id, cycle in (root.get("active_cycles") or {}).items():
        state = getattr(cycle, "_slots", {}).get("synthesis_state*")
        if id(state) not in states:
            problems.append(f"cycle {cycle_id} is in a state that does not exist ({str(state)[:60]!r})")
    return problems
