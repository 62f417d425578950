"""The engines the benchmarks compare, each serving a shipped model with the same settings.

  llama.cpp   the Q4_K_M GGUF as shipped, memory-mapped (BatOS's default)
  bfloat16    transformers on the GGUF dequantized to bfloat16 (the default before llama.cpp)
  float32     transformers on the GGUF dequantized to float32
"""

from __future__ import annotations

from pathlib import Path

from batos.llm.default_model import DEFAULT_MODEL, GGUF_FORM, GGUF_NAME, ShippedModel, default_model_folder
from batos.llm.settings import LLMSettings

ENGINES = ("llama.cpp", "bfloat16", "float32")


def make_backend(engine: str, threads: int = 2, model: ShippedModel = DEFAULT_MODEL):
    """A backend serving shipped ``model`` on ``engine``, with ``threads`` threads."""
    cache = LLMSettings().model_cache
    if engine == "llama.cpp":
        from batos.llm.llamacpp import LlamaCppBackend

        return LlamaCppBackend(model_file(model), LLMSettings(llm_threads=threads), f"{model.key} on llama.cpp")
    from batos.llm.embedded import EmbeddedBackend

    settings = LLMSettings(model_dtype=engine, llm_threads=threads)
    return EmbeddedBackend(default_model_folder(cache, engine, model=model), settings, f"{model.key} on transformers {engine}")


def model_file(model: ShippedModel = DEFAULT_MODEL) -> Path:
    return default_model_folder(LLMSettings().model_cache, GGUF_FORM, model=model) / GGUF_NAME
