"""Settings from defaults, then BATOS_* environment variables, then explicit overrides."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, TypeVar

T = TypeVar("T")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def _parse(name: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        if raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise ValueError(f"{name} must be true or false, not {raw!r}")
    if default is None or isinstance(default, str):
        return raw
    try:
        return type(default)(raw)
    except ValueError:
        raise ValueError(f"{name} must be a {type(default).__name__}, not {raw!r}") from None


def settings_from_env(cls: type[T], prefix: str = "BATOS_", environ: dict[str, str] | None = None,
                      **overrides: Any) -> T:
    """An instance of dataclass ``cls``: defaults, then ``{prefix}{FIELD}`` variables, then
    ``overrides`` that are not None. A variable that does not parse raises ValueError naming it."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        raw = environ.get(f"{prefix}{field.name.upper()}")
        if raw is not None:
            values[field.name] = _parse(f"{prefix}{field.name.upper()}", raw, field.default)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)
