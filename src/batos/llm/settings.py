"""Settings of the language-model layer (each also BATOS_<FIELD> in the environment)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from batos.config import settings_from_env
from batos.llm.generation import ConfigurationError

DTYPES = ("bfloat16", "float16", "float32")
ENGINES = ("auto", "llama.cpp", "transformers")


@dataclass
class LLMSettings:
    default_model: str = "standard"  # the shipped model an image runs unless a person chose one: standard | small
    engine: str = "auto"  # auto: llama.cpp for GGUF models (the default model is one), transformers for the rest
    model_dtype: str = "bfloat16"
    model_max_memory: str = ""  # e.g. "cpu=6GiB" or "0=10GiB,cpu=20GiB"
    model_offload_folder: str = ""
    model_cache: str = os.path.join(os.path.expanduser("~"), ".cache", "batos", "models")
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    llm_int8_enable_fp32_cpu_offload: bool = False
    max_hot_experts: int = 4
    warm_expert_bytes: int = 256 * 1024 * 1024
    lora_staging: str = "lora_adapters"
    llm_threads: int = 0  # 0: one per core this process may run on
    context_size: int = 4096  # tokens per sequence (llama.cpp)
    parallel_sequences: int = 4  # prompts decoded together (llama.cpp)
    batch_tokens: int = 512  # tokens per llama.cpp decode call
    max_new_tokens: int = 256
    openai_base_url: str = "http://127.0.0.1:11434/v1"
    openai_model: str = ""
    openai_api_key_env: str = "OPENAI_API_KEY"
    openai_timeout: float = 120.0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> LLMSettings:
        try:
            return settings_from_env(cls, environ=environ, **overrides)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None

    def max_memory(self) -> dict[Any, str] | None:
        """``model_max_memory`` as accelerate wants it; ConfigurationError when malformed."""
        if not self.model_max_memory.strip():
            return None
        limits: dict[Any, str] = {}
        for part in self.model_max_memory.split(","):
            device, sep, amount = part.strip().partition("=")
            if not sep or not amount:
                raise ConfigurationError(f"BATOS_MODEL_MAX_MEMORY: {part!r} is not DEVICE=AMOUNT")
            limits[int(device) if device.isdigit() else device] = amount
        return limits

    def thread_count(self) -> int:
        """Threads for generation: BATOS_LLM_THREADS, else one per core this process may use."""
        return self.llm_threads or len(os.sched_getaffinity(0))

    def threads_reason(self) -> str:
        if self.llm_threads:
            return f"BATOS_LLM_THREADS={self.llm_threads}"
        return f"one per core this process may use ({len(os.sched_getaffinity(0))})"

    def validate(self) -> None:
        from batos.llm.default_model import shipped_model

        shipped_model(self.default_model)
        if self.engine not in ENGINES:
            raise ConfigurationError(f"BATOS_ENGINE must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        for name, least in (("context_size", 1), ("parallel_sequences", 1), ("batch_tokens", 16)):
            if getattr(self, name) < least:
                raise ConfigurationError(f"BATOS_{name.upper()} must be at least {least}")
        if self.parallel_sequences > 7:
            raise ConfigurationError("BATOS_PARALLEL_SEQUENCES must be at most 7: llama.cpp computes 8 or more "
                                     "tokens at once with other kernels, and batched answers would differ from "
                                     "the same prompts answered alone")
        if self.llm_threads < 0:
            raise ConfigurationError("BATOS_LLM_THREADS must be 0 (one per core) or more")
        if self.model_dtype not in DTYPES:
            raise ConfigurationError(f"BATOS_MODEL_DTYPE must be one of {', '.join(DTYPES)}, not {self.model_dtype!r}")
        if self.max_hot_experts < 1:
            raise ConfigurationError("BATOS_MAX_HOT_EXPERTS must be at least 1")
        self.max_memory()
