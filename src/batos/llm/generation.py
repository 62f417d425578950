"""What a backend returns, and how it fails."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

from batos.errors import BatosError

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}
Stream = Callable[[str], None]  # receives the text of a generation piece by piece, as it is made


class BackendError(BatosError):
    """A generation that did not happen; ``transient`` means retrying may succeed."""

    code = "backend_error"

    def __init__(self, message: str, transient: bool):
        self.transient = transient
        super().__init__(f"{message} ({'transient' if transient else 'permanent'})")


class ConfigurationError(ValueError):
    """Settings that cannot work together; raised at start, before anything is loaded."""


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    model: str
    expert: str | None = None
    alternatives: tuple[str, ...] = ()  # further answers sampled in the same call (``samples`` > 1)

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_second": round(self.tokens_per_second, 3)}


def chat(prompt: str, system: str | None = None) -> list[Message]:
    """The messages for one user prompt, with an optional system prompt first."""
    messages: list[Message] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    return messages
