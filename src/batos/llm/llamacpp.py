"""The llama.cpp engine: a GGUF model mapped from the image's blob file, decoded in batches.

The model file is opened where the image keeps it (the blob's committed file): llama.cpp maps it,
so the quantized weights are neither copied nor dequantized. One context serves up to
``parallel_sequences`` sequences, each with a KV cache of its own. Several answers decode together,
one token per sequence per step; each sequence's cache keeps the tokens it last held, so a prompt that starts like the one
before it (the covenant prompt, a persona's system prompt) only decodes what is new. Experts are
GGUF LoRA adapters, applied to the context for the requests that name them. One call runs at a time.
Prompts are decoded one sequence at a time, each in its own sequence, and answers together: a prompt
decoded whole gives the same greedy text batched as alone. A prompt that reuses the beginning its
sequence held is decoded in two parts, and its greedy text can differ from a fresh decode's where
two tokens are nearly tied (rounding; seen on persona prompts in issue 10). A beginning several
prompts share is not decoded once and copied to the others: the copy changed answers too.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from zope.interface import implementer

from batos.image.blobs import BundleError
from batos.llm.experts import ColdExpert, ExpertTiers
from batos.llm.generation import BackendError, Generation, Message, Stream
from batos.llm.interfaces import IBackend
from batos.llm.settings import LLMSettings

log = logging.getLogger(__name__)
native_log = logging.getLogger(f"{__name__}.native")

PIECE_BYTES = 256
# llama.cpp computes a batch of fewer than 8 tokens with other kernels than a larger batch, and
# they round differently. So a prompt is decoded in chunks of at least 8 tokens (a reused prompt
# re-decodes at least its last 8), and answers decode together only up to 7 sequences at a time:
# then every token is computed as it would be if its prompt were decoded whole, alone.
EXACT_CHUNK = 8
TOP_K, TOP_P = 40, 0.95  # sampling (temperature > 0) only; greedy takes the most likely token
# Repetition controls for prose (llama.cpp's usual values): a 1.1 penalty over the last 64 tokens,
# and DRY, which penalizes extending a run already seen (in the last 512 tokens) by more than two tokens.
PENALTY_LAST_N, REPEAT_PENALTY = 64, 1.1
DRY_MULTIPLIER, DRY_BASE, DRY_ALLOWED_LENGTH, DRY_LAST_N = 0.8, 1.75, 2, 512
DRY_BREAKERS = ("\n", ":", "\"", "*")


@dataclass
class _Sequence:
    """One prompt being answered in a batch."""

    slot: int
    prompt: list[int]
    limit: int  # new tokens at most
    stop: list[str]
    pending: list[int] = field(default_factory=list)  # tokens to decode next
    decoded: list[int] = field(default_factory=list)  # tokens in this slot's KV cache, in order
    generated: list[int] = field(default_factory=list)
    text: str = ""
    streamed: int = 0  # characters of text already given to the stream
    logits_at: int | None = None  # index in the current batch of this sequence's logits
    done: bool = False
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))
    sampler: Any = None


@implementer(IBackend)
class LlamaCppBackend:
    """A GGUF model served by llama.cpp (see module docstring)."""

    engine = "llama.cpp"

    def __init__(self, model_file: str | Path, settings: LLMSettings, name: str, why: str = ""):
        import llama_cpp
        from llama_cpp._internals import LlamaBatch, LlamaContext, LlamaModel
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._lib = llama_cpp
        _route_native_logs(llama_cpp)
        self.name = name
        self.settings = settings
        self.model_file = str(model_file)
        self.threads = settings.thread_count()
        self.why = why
        started = time.perf_counter()
        model_params = llama_cpp.llama_model_default_params()
        model_params.use_mmap = True
        model_params.n_gpu_layers = 0
        # Repacked weights decode no faster here (measured); without them there are fewer kernels
        # whose rounding the exactness rules above have to account for.
        model_params.use_extra_bufts = False
        self.model = LlamaModel(path_model=self.model_file, params=model_params, verbose=False)
        self.parallel = settings.parallel_sequences
        self.context_size = settings.context_size
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.context_size * self.parallel
        params.n_batch = params.n_ubatch = settings.batch_tokens
        params.n_seq_max = self.parallel
        params.kv_unified = False
        params.n_threads = params.n_threads_batch = self.threads
        self.context = LlamaContext(model=self.model, params=params, verbose=False)
        self.batch = LlamaBatch(n_tokens=settings.batch_tokens, embd=0, n_seq_max=1, verbose=False)
        template = self.model.metadata().get("tokenizer.chat_template")
        if not template:
            self.model.close()
            raise BundleError(f"model {name!r} has no chat template (tokenizer.chat_template) in its GGUF file")
        self.quantization = _quantization(self.model)
        self.formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(self.model.token_eos()), bos_token=self._token_text(self.model.token_bos()))
        self.load_seconds = time.perf_counter() - started
        self._cached: list[tuple[str | None, list[int]]] = [(None, []) for _ in range(self.parallel)]
        self._adapters: dict[str, Any] = {}
        self._applied: str | None = None
        self.experts = ExpertTiers(self._install_adapter, self._remove_adapter,
                                   settings.max_hot_experts, settings.warm_expert_bytes)
        self._lock = threading.Lock()
        self.waiting = 0
        self.generations = 0
        self.reused_tokens = 0
        self.prompt_tokens = 0
        log.info("model %s mapped from %s in %.2f s (%s, %d threads, %d sequences of %d tokens)",
                 name, self.model_file, self.load_seconds, self.quantization, self.threads, self.parallel,
                 self.context_size)

    # --- experts ---------------------------------------------------------------------------------

    def know_expert(self, name: str, config: dict, weights_path: Path, size: int) -> None:
        """``weights_path`` is the expert's GGUF LoRA file."""
        self.experts.know(ColdExpert(name, config, Path(weights_path), size))

    def _install_adapter(self, name: str, config: dict, weights: bytes) -> None:
        path = str(self.experts.cold[name].weights_path).encode()
        adapter = self._lib.llama_adapter_lora_init(self.model.model, path)
        if not adapter:
            raise BackendError(f"expert {name!r} does not fit this model (llama.cpp refused its adapter)", transient=False)
        self._adapters[name] = adapter

    def _remove_adapter(self, name: str) -> None:
        adapter = self._adapters.pop(name, None)
        if adapter is None:
            return
        if self._applied == name:
            self._apply(None)
        self._cached = [(None, []) if owner == name else (owner, tokens) for owner, tokens in self._cached]
        self._lib.llama_adapter_lora_free(adapter)

    def _apply(self, expert: str | None) -> None:
        """Make ``expert`` (or no expert) the adapter the context computes with."""
        if expert == self._applied:
            return
        if expert is None:
            self._lib.llama_set_adapters_lora(self.context.ctx, None, 0, None)
        else:
            adapters = (self._lib.llama_adapter_lora_p_ctypes * 1)(self._adapters[expert])
            scales = (ctypes.c_float * 1)(1.0)
            self._lib.llama_set_adapters_lora(self.context.ctx, adapters, 1, scales)
        self._applied = expert

    # --- generation --------------------------------------------------------------------------------

    def generate(self, messages: list[Message], expert: str | None = None, max_new_tokens: int = 256,
                 stop: list[str] | None = None, temperature: float = 0.0, seed: int | None = None,
                 samples: int = 1, stream: Stream | None = None, prose: bool = False) -> Generation:
        """See IBackend.generate."""
        count = max(1, samples) if temperature > 0 else 1
        answers = self._serve([messages] * count, expert, max_new_tokens, stop, temperature, seed, stream, prose)
        first = answers[0]
        return Generation(first.text, first.prompt_tokens, first.completion_tokens, first.seconds, self.name,
                          expert, tuple(a.text for a in answers[1:]))

    def generate_many(self, conversations: list[list[Message]], expert: str | None = None,
                      max_new_tokens: int = 256, stop: list[str] | None = None, temperature: float = 0.0,
                      seed: int | None = None, prose: bool = False) -> list[Generation]:
        """See IBackend.generate_many."""
        return self._serve(conversations, expert, max_new_tokens, stop, temperature, seed, None, prose)

    def _serve(self, conversations, expert, max_new_tokens, stop, temperature, seed, stream,
               prose=False) -> list[Generation]:
        if not conversations:
            return []
        self.waiting += 1
        with self._lock:
            self.waiting -= 1
            if expert is not None:
                try:
                    self.experts.activate(expert)
                except KeyError as exc:
                    raise BackendError(str(exc), transient=False) from None
            self._apply(expert)
            prompts = [self._tokens(messages) for messages in conversations]
            answers: list[Generation] = []
            for start in range(0, len(prompts), self.parallel):
                group = prompts[start:start + self.parallel]
                answers.extend(self._decode_group(group, expert, max_new_tokens, list(stop or ()), temperature,
                                                  seed, stream if start == 0 else None, prose))
            self.generations += 1
            return answers

    def _tokens(self, messages: list[Message]) -> list[int]:
        prompt = self.formatter(messages=messages).prompt
        tokens = self.model.tokenize(prompt.encode("utf-8"), add_bos=self.model.add_bos_token(), special=True)
        if len(tokens) >= self.context_size:
            raise BackendError(f"the prompt has {len(tokens)} tokens; a sequence holds {self.context_size} "
                               "(BATOS_CONTEXT_SIZE)", transient=False)
        return tokens

    def _decode_group(self, prompts, expert, max_new_tokens, stop, temperature, seed, stream,
                      prose=False) -> list[Generation]:
        """Answer up to ``parallel`` prompts together; the first one's text goes to ``stream``."""
        started = time.perf_counter()
        sequences = [self._start(slot, prompt, expert, max_new_tokens, stop, temperature, seed, prose)
                     for slot, prompt in enumerate(prompts)]
        try:
            while not all(s.done for s in sequences):
                self._step(sequences)
                if stream is not None:
                    self._stream(sequences[0], stream)
        except BaseException:
            for s in sequences:  # what the slots hold is unknown now: forget it
                self._lib.llama_memory_seq_rm(self.context.memory, s.slot, 0, -1)
            raise
        else:
            for s in sequences:
                self._cached[s.slot] = (expert, s.decoded)
        finally:
            for s in sequences:
                s.sampler.close()
        seconds = time.perf_counter() - started
        return [Generation(s.text, len(s.prompt), len(s.generated), seconds, self.name, expert) for s in sequences]

    def _start(self, slot, prompt, expert, max_new_tokens, stop, temperature, seed, prose=False) -> _Sequence:
        """A sequence in ``slot``, keeping the part of the slot's cache that the prompt begins with."""
        owner, cached = self._cached[slot]
        keep = _common_prefix(cached, prompt) if owner == expert else 0
        keep = min(keep, len(prompt) - 1)  # the last prompt token is decoded again for its logits
        if len(prompt) >= EXACT_CHUNK:
            keep = min(keep, len(prompt) - EXACT_CHUNK)
        self._lib.llama_memory_seq_rm(self.context.memory, slot, keep, -1)
        self._cached[slot] = (None, [])
        self.reused_tokens += keep
        self.prompt_tokens += len(prompt)
        limit = min(max_new_tokens, self.context_size - len(prompt))
        sequence = _Sequence(slot, prompt, limit, stop, pending=prompt[keep:], decoded=prompt[:keep])
        sequence.sampler = self._sampler(temperature, None if seed is None else seed + slot, prose)
        return sequence

    def _sampler(self, temperature: float, seed: int | None, prose: bool = False):
        """The sampler chain: for prose, llama.cpp's own repetition controls first (a mild
        penalty on recent tokens and the DRY sampler, which stops a reply from running into a
        loop of one sentence); code is never penalized for repeating ``self.`` and its names."""
        from llama_cpp._internals import LlamaSampler

        sampler = LlamaSampler()
        if prose:
            sampler.add_penalties(self.model.n_vocab(), PENALTY_LAST_N, REPEAT_PENALTY, 0.0, 0.0)
            sampler.add_dry(self.model, DRY_MULTIPLIER, DRY_BASE, DRY_ALLOWED_LENGTH, DRY_LAST_N, list(DRY_BREAKERS))
        if temperature <= 0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(TOP_K)
            sampler.add_top_p(TOP_P, 1)
            sampler.add_temp(temperature)
            sampler.add_dist(self._lib.LLAMA_DEFAULT_SEED if seed is None else seed & 0xFFFFFFFF)
        return sampler

    def _prefill(self, s: _Sequence, tokens: list[int]) -> None:
        """Decode ``tokens`` of one sequence's prompt without sampling, in chunks of 8 or more."""
        while tokens:
            size = _chunk_size(len(tokens), self.settings.batch_tokens)
            self.batch.batch.n_tokens = 0
            self._put(s, tokens[:size])
            self._decode()
            tokens = tokens[size:]

    def _put(self, s: _Sequence, tokens: list[int]) -> None:
        """Append ``tokens`` of sequence ``s`` to the batch, at the positions after what it holds."""
        batch = self.batch.batch
        for token in tokens:
            i = batch.n_tokens
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, len(s.decoded), 1
            batch.seq_id[i][0], batch.logits[i] = s.slot, False
            s.decoded.append(token)
            batch.n_tokens += 1

    def _decode(self) -> None:
        status = self._lib.llama_decode(self.context.ctx, self.batch.batch)
        if status != 0:
            raise BackendError(f"llama.cpp could not decode the batch (status {status})", transient=False)

    def _step(self, sequences: list[_Sequence]) -> None:
        """Decode one batch: a chunk of one sequence's prompt, or else each sequence's last sampled
        token. (Prompts of several sequences decoded in one batch give logits that differ from each
        prompt decoded alone; one token per sequence does not.)"""
        batch = self.batch.batch
        batch.n_tokens = 0
        prompting = [s for s in sequences if not s.done and len(s.pending) > 1]
        for s in prompting[:1] or sequences:
            if s.done or not s.pending:
                continue
            size = _chunk_size(len(s.pending), self.settings.batch_tokens)
            take, s.pending = s.pending[:size], s.pending[size:]
            self._put(s, take)
            if not s.pending:
                batch.logits[batch.n_tokens - 1] = True
                s.logits_at = batch.n_tokens - 1
        self._decode()
        for s in sequences:
            if s.logits_at is not None:
                token = self._lib.llama_sampler_sample(s.sampler.sampler, self.context.ctx, s.logits_at)
                s.logits_at = None
                self._take(s, token)

    def _take(self, s: _Sequence, token: int) -> None:
        """Add a sampled token to the sequence, ending it on end-of-generation, a stop string or its limit."""
        if self._lib.llama_vocab_is_eog(self.model.vocab, token):
            s.text += s.decoder.decode(b"", final=True)
            s.done = True
            return
        s.generated.append(token)
        s.text += s.decoder.decode(self._piece(token))
        for marker in s.stop:
            at = s.text.find(marker, max(0, len(s.text) - PIECE_BYTES - len(marker)))
            if at >= 0:
                s.text, s.done = s.text[:at], True
                return
        if len(s.generated) >= s.limit:
            s.text += s.decoder.decode(b"", final=True)
            s.done = True
        else:
            s.pending = [token]

    def _stream(self, s: _Sequence, stream: Stream) -> None:
        """Give the stream the text that no stop string can still take back."""
        end = len(s.text) if s.done else len(s.text) - _held_back(s.text, s.stop)
        if end > s.streamed:
            piece, s.streamed = s.text[s.streamed:end], end
            stream(piece)

    def _piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (special tokens render as their text only if ``special``)."""
        buffer = ctypes.create_string_buffer(PIECE_BYTES)
        n = self._lib.llama_token_to_piece(self.model.vocab, token, buffer, PIECE_BYTES, 0, special)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self.model.vocab, token, buffer, -n, 0, special)
        return buffer.raw[:n]

    def _token_text(self, token: int) -> str:
        return self._piece(token, special=True).decode("utf-8", "replace")

    def forget_prompts(self) -> None:
        """Empty every sequence's cache: the next prompts are decoded whole."""
        with self._lock:
            self._lib.llama_memory_clear(self.context.memory, True)
            self._cached = [(None, []) for _ in range(self.parallel)]

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "embedded", "engine": self.engine, "model": self.name, "model_file": self.model_file,
            "quantization": self.quantization, "threads": self.threads, "why": self.why,
            "context_size": self.context_size, "parallel_sequences": self.parallel,
            "device_map": {"": "cpu"}, "load_seconds": round(self.load_seconds, 3),
            "generations": self.generations, "queue": self.waiting, "experts": self.experts.tiers(),
            "warm_bytes": self.experts.warm_bytes, "max_hot_experts": self.experts.max_hot,
            "prompt_tokens": self.prompt_tokens, "prompt_tokens_reused": self.reused_tokens,
        }

    def close(self) -> None:
        with self._lock:
            for name in list(self._adapters):
                self._remove_adapter(name)
            self.batch.close()
            self.context.close()
            self.model.close()


_native_callback = None  # kept referenced: llama.cpp holds only its address
NATIVE_LEVELS = {3: logging.WARNING, 4: logging.ERROR}  # ggml.h: 1 debug, 2 info, 3 warn, 4 error, 5 continued


def _route_native_logs(llama_cpp) -> None:
    """llama.cpp's own messages go to logging, never to the process's stderr: that may be a pipe
    nobody reads, and a full pipe would block the thread loading the model."""
    global _native_callback
    if _native_callback is not None:
        return

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data) -> None:
        message = text.decode("utf-8", "replace").rstrip()
        if message:
            native_log.log(NATIVE_LEVELS.get(level, logging.DEBUG), "%s", message)

    _native_callback = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def _chunk_size(pending: int, room: int) -> int:
    """How many of ``pending`` prompt tokens to decode now: at most ``room``, never leaving fewer
    than 8 behind (see EXACT_CHUNK)."""
    size = min(room, pending)
    if 0 < pending - size < EXACT_CHUNK:
        size = pending - EXACT_CHUNK
    return size


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _held_back(text: str, stop: list[str]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop string."""
    longest = 0
    for marker in stop:
        for n in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:n]):
                longest = n
                break
    return longest


def _quantization(model) -> str:
    """The model's weight format as llama.cpp describes it (``qwen2 1B Q4_K - Medium`` -> ``Q4_K - Medium``)."""
    buffer = ctypes.create_string_buffer(256)
    import llama_cpp

    llama_cpp.llama_model_desc(model.model, buffer, 256)
    words = buffer.value.decode("utf-8", "replace").split(" ", 2)
    return words[2] if len(words) == 3 else buffer.value.decode("utf-8", "replace")
