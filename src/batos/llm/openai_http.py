"""The OpenAI-compatible HTTP backend (Ollama, vLLM, llama.cpp's server, ...).

Experts have no weights here: an expert becomes a system prompt. Time-outs, refused
connections and 5xx answers are transient failures; other HTTP errors are permanent.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from zope.interface import implementer

from batos.llm.generation import BackendError, ConfigurationError, Generation, Message, Stream
from batos.llm.interfaces import IBackend
from batos.llm.settings import LLMSettings

PROSE_FREQUENCY_PENALTY = 0.3  # for answers to a person: the server's own repetition control


@implementer(IBackend)
class OpenAIBackend:
    """Chat completions over HTTP (see module docstring)."""

    engine = "openai"

    def __init__(self, settings: LLMSettings, expert_prompts: dict[str, str] | None = None):
        if not settings.openai_model:
            raise ConfigurationError("BATOS_LLM=openai needs BATOS_OPENAI_MODEL (the server's model name)")
        self.settings = settings
        self.base_url = settings.openai_base_url.rstrip("/")
        self.name = f"{settings.openai_model} at {self.base_url}"
        self.api_key = os.environ.get(settings.openai_api_key_env, "")
        self.expert_prompts = dict(expert_prompts or {})
        self._lock = threading.Lock()
        self.waiting = 0
        self.generations = 0

    def know_expert(self, name: str, system_prompt: str) -> None:
        self.expert_prompts[name] = system_prompt

    def generate(self, messages: list[Message], expert: str | None = None, max_new_tokens: int = 256,
                 stop: list[str] | None = None, temperature: float = 0.0, seed: int | None = None,
                 samples: int = 1, stream: Stream | None = None, prose: bool = False) -> Generation:
        """See IBackend.generate. The server is asked without streaming: ``stream`` gets the whole
        text as one piece; ``prose`` asks it for a frequency penalty."""
        if expert is not None:
            if expert not in self.expert_prompts:
                raise BackendError(f"no expert named {expert!r} (known: {', '.join(sorted(self.expert_prompts)) or 'none'})", transient=False)
            messages = [{"role": "system", "content": self.expert_prompts[expert]},
                        *[m for m in messages if m["role"] != "system"]]
        body: dict[str, Any] = {"model": self.settings.openai_model, "messages": messages,
                                "max_tokens": max_new_tokens, "temperature": temperature}
        if stop:
            body["stop"] = list(stop)
        if seed is not None:
            body["seed"] = seed
        if samples > 1 and temperature > 0:
            body["n"] = samples
        if prose:
            body["frequency_penalty"] = PROSE_FREQUENCY_PENALTY
        self.waiting += 1
        with self._lock:
            self.waiting -= 1
            started = time.perf_counter()
            answer = self._post("/chat/completions", body)
        try:
            texts = [choice["message"]["content"] or "" for choice in answer["choices"]]
            text = texts[0]
            usage = answer.get("usage") or {}
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"the server's answer has no choices[0].message.content: {str(answer)[:200]}", transient=False) from None
        self.generations += 1
        if stream is not None and text:
            stream(text)
        return Generation(text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)),
                          time.perf_counter() - started, self.settings.openai_model, expert, tuple(texts[1:]))

    def generate_many(self, conversations: list[list[Message]], expert: str | None = None,
                      max_new_tokens: int = 256, stop: list[str] | None = None, temperature: float = 0.0,
                      seed: int | None = None, prose: bool = False) -> list[Generation]:
        """See IBackend.generate_many: one request after another (the server batches if it can)."""
        return [self.generate(messages, expert, max_new_tokens, stop, temperature, seed, prose=prose)
                for messages in conversations]

    def _post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(
            self.base_url + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json",
                     **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})})
        try:
            with urllib.request.urlopen(request, timeout=self.settings.openai_timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise BackendError(f"{self.base_url} answered HTTP {exc.code}: {detail}", transient=exc.code >= 500 or exc.code == 429) from None
        except (socket.timeout, TimeoutError) as exc:
            raise BackendError(f"{self.base_url} did not answer within {self.settings.openai_timeout:g} s", transient=True) from exc
        except urllib.error.URLError as exc:
            transient = isinstance(exc.reason, (ConnectionError, socket.timeout, TimeoutError, OSError))
            raise BackendError(f"cannot reach {self.base_url}: {exc.reason}", transient=transient) from None
        except ValueError as exc:
            raise BackendError(f"{self.base_url} answered something that is not JSON: {exc}", transient=False) from None

    def stats(self) -> dict[str, Any]:
        return {"backend": "openai", "engine": self.engine, "model": self.name, "device_map": {"": "remote"},
                "generations": self.generations, "queue": self.waiting,
                "experts": {name: "prompt" for name in sorted(self.expert_prompts)}}

    def close(self) -> None:
        pass
