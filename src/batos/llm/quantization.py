"""Validating the optional bitsandbytes quantization flags before anything loads."""

from __future__ import annotations

from typing import Any

from batos.llm.generation import ConfigurationError
from batos.llm.settings import LLMSettings


def quantization_config(settings: LLMSettings, cuda_available: bool) -> Any | None:
    """A BitsAndBytesConfig for the flags in ``settings``, or None when none are set.

    Raises ConfigurationError for flags that contradict each other (4-bit with 8-bit; fp32 CPU
    offload, an 8-bit feature, without 8-bit) or that cannot work here (any of them without CUDA).
    """
    four, eight, offload = settings.load_in_4bit, settings.load_in_8bit, settings.llm_int8_enable_fp32_cpu_offload
    if four and eight:
        raise ConfigurationError("BATOS_LOAD_IN_4BIT and BATOS_LOAD_IN_8BIT exclude each other: choose one")
    if offload and not eight:
        raise ConfigurationError(
            "BATOS_LLM_INT8_ENABLE_FP32_CPU_OFFLOAD is an 8-bit option: it needs BATOS_LOAD_IN_8BIT")
    if not (four or eight):
        return None
    if not cuda_available:
        raise ConfigurationError(
            "4-bit and 8-bit loading (bitsandbytes) need a CUDA device and this machine has none; "
            "unset BATOS_LOAD_IN_4BIT / BATOS_LOAD_IN_8BIT to load in BATOS_MODEL_DTYPE on the CPU")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=four, load_in_8bit=eight, llm_int8_enable_fp32_cpu_offload=offload)
