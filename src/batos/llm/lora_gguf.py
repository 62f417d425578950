"""GGUF files for llama.cpp: a peft LoRA adapter converted to a GGUF LoRA, and a model file checked.

The adapter's A and B matrices are written unchanged under llama.cpp's tensor names for the base
model's architecture (the A matrix of ``model.layers.3.self_attn.q_proj`` becomes ``blk.3.attn_q.weight.lora_a``), with
the metadata llama.cpp checks when it loads an adapter: type ``adapter``, adapter type ``lora``,
the architecture, and alpha. Nothing is merged into the base weights.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from batos.image.blobs import BundleError

PEFT_PREFIX = "base_model.model."
PARTS = {".lora_A.weight": "lora_a", ".lora_B.weight": "lora_b"}


def base_architecture(gguf_path: str | os.PathLike) -> tuple[str, int]:
    """The architecture name and block count recorded in a GGUF model file."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    architecture = _field_text(reader, "general.architecture")
    blocks = int(reader.fields[f"{architecture}.block_count"].contents())
    return architecture, blocks


def check_model_file(path: str | os.PathLike) -> None:
    """BundleError unless ``path`` is a GGUF model llama.cpp can chat with: a readable header, not
    an adapter, with an architecture and a chat template."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:
        raise BundleError(f"{Path(path).name} is not a GGUF file that can be read ({type(exc).__name__}: {exc})") from None
    if "general.type" in reader.fields and str(reader.fields["general.type"].contents()) == "adapter":
        raise BundleError(f"{Path(path).name} is a GGUF adapter, not a model")
    for key in ("general.architecture", "tokenizer.chat_template"):
        _field_text(reader, key)


def _field_text(reader, key: str) -> str:
    field = reader.fields.get(key)
    if field is None:
        raise BundleError(f"the GGUF model has no {key}")
    return str(field.contents())


def convert_lora(config: dict, weights: str | os.PathLike, base_gguf: str | os.PathLike,
                 destination: str | os.PathLike) -> Path:
    """Write ``destination``: the peft adapter (``config``, safetensors ``weights``) as GGUF LoRA.

    BundleError for an adapter llama.cpp cannot apply: DoRA, extra trained modules, biases, or a
    module the base architecture does not have.
    """
    import gguf
    from safetensors.numpy import load_file

    _refuse_unsupported(config)
    architecture, blocks = base_architecture(base_gguf)
    arch = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}.get(architecture)
    if arch is None:
        raise BundleError(f"llama.cpp adapters are not known for the architecture {architecture!r}")
    names = gguf.get_tensor_name_map(arch, blocks)
    tensors = load_file(str(weights))
    writer = gguf.GGUFWriter(str(destination), architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, _effective_alpha(config))
    for key in sorted(tensors):
        module, part = _split(key)
        target = names.get_name(f"{module}.weight", try_suffixes=(".weight",))
        if target is None:
            raise BundleError(f"the adapter's module {module!r} has no counterpart in a {architecture} model")
        writer.add_tensor(f"{target}.{part}", np.ascontiguousarray(tensors[key], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(destination)


def _refuse_unsupported(config: dict) -> None:
    if config.get("use_dora"):
        raise BundleError("DoRA adapters cannot be applied by llama.cpp")
    if config.get("modules_to_save"):
        raise BundleError("adapters that also train whole modules (modules_to_save) cannot be applied by llama.cpp")
    if config.get("bias", "none") != "none":
        raise BundleError("adapters with trained biases cannot be applied by llama.cpp")


def _effective_alpha(config: dict) -> float:
    """llama.cpp scales by alpha / r; rsLoRA scales by alpha / sqrt(r)."""
    alpha, rank = float(config.get("lora_alpha", 8)), float(config.get("r", 8))
    return alpha * math.sqrt(rank) if config.get("use_rslora") else alpha


def _split(key: str) -> tuple[str, str]:
    """``base_model.model.X.lora_A.weight`` -> (``X``, ``lora_a``)."""
    for suffix, part in PARTS.items():
        if key.endswith(suffix):
            module = key[:-len(suffix)]
            return (module[len(PEFT_PREFIX):] if module.startswith(PEFT_PREFIX) else module), part
    raise BundleError(f"the adapter holds {key!r}, which is neither a LoRA A nor a LoRA B matrix")
