"""The embedded backend: a transformers model in this process, loaded from a folder in place.

The folder is usually a set of links to an image's committed blob files: the model is built on
the meta device and its weights are mapped from those files by accelerate, split only at the
model's own ``_no_split_modules`` boundaries. Experts are peft LoRA adapters moved between memory
tiers by ExpertTiers. One generation runs at a time.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from pathlib import Path
from typing import Any

from zope.interface import implementer

from batos.llm.experts import ColdExpert, ExpertTiers
from batos.llm.generation import BackendError, Generation, Message, Stream
from batos.llm.interfaces import IBackend
from batos.llm.quantization import quantization_config
from batos.llm.settings import LLMSettings

log = logging.getLogger(__name__)
PROSE_REPETITION_PENALTY = 1.1  # for answers to a person (transformers' own repetition control)


def load_model(folder: str | Path, settings: LLMSettings):
    """(model, tokenizer) from a local folder, weights mapped in place; nothing downloaded."""
    import torch
    from accelerate import init_empty_weights, load_checkpoint_and_dispatch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = str(folder)
    dtype = getattr(torch, settings.model_dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    bnb = quantization_config(settings, torch.cuda.is_available())
    if bnb is not None:  # bitsandbytes quantizes while loading; accelerate's dispatch cannot
        model = AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, quantization_config=bnb, device_map="auto",
            max_memory=settings.max_memory(), offload_folder=settings.model_offload_folder or None)
        return model.eval(), tokenizer
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()
    model = load_checkpoint_and_dispatch(
        model, folder, device_map="auto", dtype=dtype,
        no_split_module_classes=sorted(model._no_split_modules or []),
        max_memory=settings.max_memory(), offload_folder=settings.model_offload_folder or None,
    )
    return model.eval(), tokenizer


@implementer(IBackend)
class EmbeddedBackend:
    """A local model plus its experts (see module docstring)."""

    engine = "transformers"

    def __init__(self, folder: str | Path, settings: LLMSettings, name: str, why: str = ""):
        import torch

        self.threads = settings.thread_count()
        torch.set_num_threads(self.threads)
        self.name = name
        self.settings = settings
        self.why = why
        started = time.perf_counter()
        self.model, self.tokenizer = load_model(folder, settings)
        self.load_seconds = time.perf_counter() - started
        self.peft = None
        self.experts = ExpertTiers(self._install_adapter, self._remove_adapter,
                                   settings.max_hot_experts, settings.warm_expert_bytes)
        self._lock = threading.Lock()
        self.waiting = 0
        self.generations = 0
        log.info("model %s loaded in %.1f s, device map %s", name, self.load_seconds, self.device_map)

    @property
    def device_map(self) -> dict[str, Any]:
        return dict(getattr(self.model, "hf_device_map", None) or {"": str(self.model.device)})

    def know_expert(self, name: str, config: dict, weights_path: Path, size: int) -> None:
        self.experts.know(ColdExpert(name, config, Path(weights_path), size))

    def _install_adapter(self, name: str, config: dict, weights: bytes) -> None:
        from peft import PeftConfig, PeftModel, set_peft_model_state_dict
        from safetensors.torch import load as load_safetensors

        peft_config = PeftConfig.from_peft_type(**config)
        peft_config.inference_mode = True
        if self.peft is None:
            self.peft = PeftModel(self.model, peft_config, adapter_name=name)
        else:
            self.peft.add_adapter(name, peft_config)
        result = set_peft_model_state_dict(self.peft, load_safetensors(weights), adapter_name=name)
        missing = [k for k in result.missing_keys if "lora_" in k and f".{name}." in k]
        if missing:
            self._remove_adapter(name)
            raise BackendError(f"expert {name!r} does not fit this model ({len(missing)} LoRA weights missing)", transient=False)
        self.peft.eval()

    def _remove_adapter(self, name: str) -> None:
        import torch

        if self.peft is None:
            return
        if set(self.peft.peft_config) == {name}:
            self.model = self.peft.unload()  # the last adapter: back to the bare model
            self.peft = None
        else:
            self.peft.delete_adapter(name)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate(self, messages: list[Message], expert: str | None = None, max_new_tokens: int = 256,
                 stop: list[str] | None = None, temperature: float = 0.0, seed: int | None = None,
                 samples: int = 1, stream: Stream | None = None, prose: bool = False) -> Generation:
        """See IBackend.generate."""
        self.waiting += 1
        with self._lock:
            self.waiting -= 1
            return self._generate(messages, expert, max_new_tokens, stop, temperature, seed, samples, stream, prose)

    def generate_many(self, conversations: list[list[Message]], expert: str | None = None,
                      max_new_tokens: int = 256, stop: list[str] | None = None, temperature: float = 0.0,
                      seed: int | None = None, prose: bool = False) -> list[Generation]:
        """See IBackend.generate_many: here one conversation after another (no padded batch)."""
        return [self.generate(messages, expert, max_new_tokens, stop, temperature, seed, prose=prose)
                for messages in conversations]

    def _generate(self, messages, expert, max_new_tokens, stop, temperature, seed, samples=1, stream=None,
                  prose=False) -> Generation:
        import contextlib

        import torch

        if expert is not None:
            try:
                self.experts.activate(expert)
            except KeyError as exc:
                raise BackendError(str(exc), transient=False) from None
            self.peft.set_adapter(expert)
        started = time.perf_counter()
        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": self.tokenizer.eos_token_id}
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature, num_return_sequences=max(1, samples))
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if stop:
            options.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        if prose:
            options["repetition_penalty"] = PROSE_REPETITION_PENALTY
        if seed is not None:
            torch.manual_seed(seed)
        if stream is not None:
            options["streamer"] = _streamer(self.tokenizer, stream)
        runner = self.peft if self.peft is not None else self.model
        context = self.peft.disable_adapter() if (self.peft is not None and expert is None) else contextlib.nullcontext()
        with torch.inference_mode(), context:
            output = runner.generate(**inputs, **options)
        prompt_tokens = inputs["input_ids"].shape[1]
        texts = []
        for sequence in output:
            text = self.tokenizer.decode(sequence[prompt_tokens:], skip_special_tokens=True)
            for marker in stop or ():
                if marker in text:
                    text = text[:text.index(marker)]
            texts.append(text)
        self.generations += 1
        completion = int(output[0][prompt_tokens:].shape[0])
        return Generation(texts[0], prompt_tokens, completion, time.perf_counter() - started, self.name, expert,
                          tuple(texts[1:]))

    def logits(self, text: str):
        """The model's logits for ``text`` (for checks that two loads are the same model)."""
        import torch

        ids = self.tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            return self.model(**ids).logits

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "embedded", "engine": self.engine, "model": self.name, "dtype": self.settings.model_dtype,
            "threads": self.threads, "why": self.why,
            "device_map": {k: str(v) for k, v in self.device_map.items()},
            "load_seconds": round(self.load_seconds, 3), "generations": self.generations,
            "queue": self.waiting, "experts": self.experts.tiers(),
            "warm_bytes": self.experts.warm_bytes, "max_hot_experts": self.experts.max_hot,
        }

    def close(self) -> None:
        import torch

        self.peft = None
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _streamer(tokenizer, stream: Stream):
    """A transformers streamer that hands each finished piece of the new text to ``stream``."""
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                stream(text)

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
