"""The models and experts the image holds: ``pLLM_obj``'s bookkeeping, apart from the runtime.

Every function takes ``pLLM_obj`` inside a transaction the caller runs (and retries on a conflict:
each function reads what it needs and may simply run again). Nothing here loads a model.
"""

from __future__ import annotations

import os
from typing import Any

from batos.errors import NotFound
from batos.image.blobs import BundleError, ModelBundle, ensure_model_slots, verify_bundle
from batos.image.objects import UvmObject


def pllm_of(root: Any) -> UvmObject:
    pllm = root["pLLM_obj"]
    ensure_model_slots(pllm)
    return pllm


def active_model(pllm: UvmObject) -> str | None:
    """The active model's name, or None when there is none (or its bundle is gone)."""
    name = pllm.active_model
    return name if name is not None and name in pllm.model_bundles else None


def active_model_chosen(pllm: UvmObject) -> bool:
    """Whether a person chose the active model (``model use``), rather than it being the shipped default."""
    return bool(pllm._slots.get("active_model_chosen", False))


def add_bundle(pllm: UvmObject, bundle: ModelBundle, activate: bool = False) -> None:
    """Keep ``bundle``; with ``activate``, it becomes the active model as the shipped default."""
    if bundle.name in pllm.model_bundles and not activate:
        raise BundleError(f"a model named {bundle.name!r} exists already; choose another name")
    pllm.model_bundles[bundle.name] = bundle
    if activate:
        set_active(pllm, bundle.name)


def require_absent(pllm: UvmObject, name: str) -> None:
    if name in pllm.model_bundles:
        raise BundleError(f"a model named {name!r} exists already; choose another name")


def activate(pllm: UvmObject, name: str) -> tuple[str | None, bool]:
    """Make ``name`` the active model, as a person's choice (its files verified first); the previous
    active name and whether it was chosen."""
    if name not in pllm.model_bundles:
        raise NotFound(f"no model named {name!r} (known: {', '.join(pllm.model_bundles.keys()) or 'none'})")
    problems = verify_bundle(pllm.model_bundles[name])
    if problems:
        raise BundleError(f"model {name!r} is damaged: {'; '.join(problems)}")
    previous = pllm.active_model, active_model_chosen(pllm)
    set_active(pllm, name, chosen=True)
    return previous


def set_active(pllm: UvmObject, name: str | None, chosen: bool = False) -> None:
    pllm.active_model = name
    if chosen != active_model_chosen(pllm):
        pllm.active_model_chosen = chosen


def listing(pllm: UvmObject) -> dict[str, Any]:
    return {"active": pllm.active_model, "chosen": active_model_chosen(pllm),
            "models": [bundle.summary() for bundle in pllm.model_bundles.values()]}


def link_bundle(pllm: UvmObject, name: str, folder: str | os.PathLike) -> None:
    """Fill ``folder`` with links to the committed files of model ``name``."""
    pllm.model_bundles[name].link_into(folder)


def gguf_file(pllm: UvmObject, name: str) -> str | None:
    """The committed file of model ``name`` if it is a single GGUF model (no config.json), else None."""
    files = pllm.model_bundles[name].files
    ggufs = [relative for relative in files if relative.endswith(".gguf")]
    if len(ggufs) != 1 or "config.json" in files:
        return None
    return files[ggufs[0]].committed()


def gguf_experts(pllm: UvmObject, model: str) -> tuple[list[tuple[str, dict, str, int]], list[tuple[str, dict, str]]]:
    """Experts as llama.cpp needs them for ``model``: (name, config, GGUF LoRA file, size) of those
    converted for it, and (name, config, peft weights file) of those still to convert."""
    ready, missing = [], []
    for name, record in pllm.lora_repository.items():
        slots = record._slots
        if slots.get("gguf_base") == model and slots.get("gguf_blob") is not None:
            ready.append((name, dict(record.config), slots["gguf_blob"].committed(), record.size))
        else:
            missing.append((name, dict(record.config), record.model_blob.committed()))
    return ready, missing


def add_gguf_lora(pllm: UvmObject, name: str, model: str, blob: Any) -> None:
    """Keep ``blob``, expert ``name`` converted to a GGUF LoRA for ``model`` (the peft original stays)."""
    record = pllm.lora_repository[name]
    record.gguf_blob = blob
    record.gguf_base = model


def experts(pllm: UvmObject) -> list[tuple[str, dict, str, int]]:
    """Every expert as (name, config, committed weights file, size)."""
    return [(name, dict(record.config), record.model_blob.committed(), record.size)
            for name, record in pllm.lora_repository.items()]


def expert(pllm: UvmObject, name: str) -> tuple[str, dict, str, int]:
    record = pllm.lora_repository[name]
    return name, dict(record.config), record.model_blob.committed(), record.size


def add_expert(pllm: UvmObject, name: str, record: UvmObject) -> bool:
    """Store the expert; False when the same adapter (by digest) is there already."""
    existing = pllm.lora_repository.get(name)
    if existing is not None and existing.sha256 == record.sha256:
        return False
    pllm.lora_repository[name] = record
    return True


def expert_prompts(pllm: UvmObject) -> dict[str, str]:
    """System prompts standing in for experts where adapters cannot be applied (a remote model)."""
    return {name: record._slots.get("system_prompt") or f"You are {name}." for name, record in pllm.lora_repository.items()}
