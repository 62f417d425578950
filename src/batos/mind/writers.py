"""Who writes a missing method (the method cycle's DELEGATING step)."""

from __future__ import annotations

import logging
from typing import Any

from batos.errors import BatosError
from batos.llm.embeddings import EmbeddingsUnavailable
from batos.mind.codex import PERSONA_NAMES
from batos.mind.cycle import is_facet
from batos.mind.router import Router

log = logging.getLogger(__name__)

DEFAULT_WRITER = "BRICK"


def mission_text(brief: dict[str, Any]) -> str:
    """The mission as the router reads it."""
    words = brief["selector"].strip("_").replace("_", " ")
    return f"Write a Python method {words}: {brief.get('intent') or words}"


def writer_for(brief: dict[str, Any], router: Router | None) -> tuple[str, dict | None]:
    """The persona who writes the method, and the route that chose it: a facet belongs to its
    persona (BatOS writes it from its intent); any other mission goes where the router sends it
    (code missions: BRICK), from embeddings alone. Without embeddings, BRICK."""
    if is_facet(brief["selector"]):
        owner = brief["slots"].get("name")
        return (owner if owner in PERSONA_NAMES else DEFAULT_WRITER), None
    if router is None:
        return DEFAULT_WRITER, None
    try:
        route = router.route(mission_text(brief), tie_break=False)  # who writes is not worth a model call
    except (EmbeddingsUnavailable, BatosError) as exc:
        log.warning("the method cycle could not route its mission (%s); %s writes it", exc, DEFAULT_WRITER)
        return DEFAULT_WRITER, None
    return route["lead"], {k: route[k] for k in ("archetype", "lead", "scores", "decided_by")}
