"""Settings of the language-model layer (each also BATOS_<FIELD> in the environment)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from batos.config import settings_from_env
from batos.llm.generation import ConfigurationError

DTYPES = ("bfloat16", "float16", "float32")


@dataclass
class LLMSettings:
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
    torch_threads: int = 0  # 0: one per core
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

    def validate(self) -> None:
        if self.model_dtype not in DTYPES:
            raise ConfigurationError(f"BATOS_MODEL_DTYPE must be one of {', '.join(DTYPES)}, not {self.model_dtype!r}")
        if self.max_hot_experts < 1:
            raise ConfigurationError("BATOS_MAX_HOT_EXPERTS must be at least 1")
        self.max_memory()
