"""Configuration of the language-model layer is checked before anything is opened or loaded."""

from __future__ import annotations

import pytest

from batos.llm.generation import ConfigurationError
from batos.llm.quantization import quantization_config
from batos.llm.settings import LLMSettings

from conftest import Server


@pytest.mark.parametrize("flags, message", [
    ({"load_in_4bit": True, "load_in_8bit": True}, "exclude each other"),
    ({"llm_int8_enable_fp32_cpu_offload": True}, "needs BATOS_LOAD_IN_8BIT"),
    ({"load_in_4bit": True, "llm_int8_enable_fp32_cpu_offload": True}, "needs BATOS_LOAD_IN_8BIT"),
])
def test_conflicting_quantization_flags_are_refused(flags, message):
    with pytest.raises(ConfigurationError, match=message):
        quantization_config(LLMSettings(**flags), cuda_available=True)


def test_quantization_without_cuda_is_refused_and_none_needs_nothing():
    with pytest.raises(ConfigurationError, match="CUDA"):
        quantization_config(LLMSettings(load_in_8bit=True), cuda_available=False)
    assert quantization_config(LLMSettings(), cuda_available=False) is None


def test_settings_validation():
    with pytest.raises(ConfigurationError, match="BATOS_MODEL_DTYPE"):
        LLMSettings(model_dtype="int3").validate()
    with pytest.raises(ConfigurationError, match="DEVICE=AMOUNT"):
        LLMSettings(model_max_memory="lots").validate()
    assert LLMSettings(model_max_memory="0=10GiB, cpu=20GiB").max_memory() == {0: "10GiB", "cpu": "20GiB"}
    with pytest.raises(ConfigurationError, match="BATOS_LOAD_IN_4BIT"):
        LLMSettings.from_env({"BATOS_LOAD_IN_4BIT": "perhaps"})
    with pytest.raises(ConfigurationError, match="BATOS_ENGINE must be one of auto, llama.cpp, transformers"):
        LLMSettings(engine="abacus").validate()
    with pytest.raises(ConfigurationError, match="BATOS_PARALLEL_SEQUENCES"):
        LLMSettings(parallel_sequences=0).validate()


def test_threads_default_to_the_cores_this_process_may_use():
    import os

    assert LLMSettings().thread_count() == len(os.sched_getaffinity(0))
    assert "core" in LLMSettings().threads_reason()
    assert LLMSettings(llm_threads=3).thread_count() == 3 and "BATOS_LLM_THREADS=3" in LLMSettings(llm_threads=3).threads_reason()


@pytest.mark.parametrize("env", [
    {"BATOS_LLM": "embedded", "BATOS_LOAD_IN_4BIT": "1", "BATOS_LOAD_IN_8BIT": "1"},
    {"BATOS_LLM": "embedded", "BATOS_LLM_INT8_ENABLE_FP32_CPU_OFFLOAD": "true"},
    {"BATOS_LLM": "telepathy"},
    {"BATOS_LLM": "openai"},
    {"BATOS_LLM": "embedded", "BATOS_ENGINE": "abacus"},
    {"BATOS_LLM": "embedded", "BATOS_CONTEXT_SIZE": "0"},
    {"BATOS_LLM": "embedded", "BATOS_PARALLEL_SEQUENCES": "many"},
    {"BATOS_LLM": "embedded", "BATOS_LLM_THREADS": "-1"},
])
def test_uvm_refuses_bad_llm_configuration_at_start_touching_nothing(tmp_path, env):
    srv = Server(tmp_path / "img.fs", env=env).start(wait=False)
    assert srv.process.wait(60) == 2
    assert "BATOS_" in srv.process.stderr.read()
    assert not (tmp_path / "img.fs").exists()


CONVERT_ONCE = """
import logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
import batos.llm.default_model as d

def assemble(model, destination, progress=None):
    destination.write_bytes(b"gguf")
    return destination

def convert(gguf, destination, dtype, progress=None, source_sha256=None):
    time.sleep(1.5)  # long enough for the other process to arrive and wait
    destination.mkdir()
    (destination / "batos_source.json").write_text("{}")
    return destination

d.assemble_gguf, d.convert_gguf = assemble, convert
print(d.default_model_folder(sys.argv[1], "bfloat16"))
"""


def test_one_process_converts_the_default_model_while_the_others_wait(tmp_path):
    """Two processes starting on an empty cache: one conversion, one folder, no leftovers."""
    import subprocess
    import sys

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ".convert-left-by-a-killed-process").mkdir()
    runs = [subprocess.Popen([sys.executable, "-c", CONVERT_ONCE, str(cache)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=60) for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs
    assert len({out.strip() for out, _ in outputs}) == 1
    assert sum("standard model is ready in" in err for _, err in outputs) == 1
    assert [p.name for p in cache.iterdir() if p.name.startswith(".convert-")] == []
