"""The router (the seeds' CP-MoE): a question's archetype, and who answers it.

A question is embedded once and compared with labelled exemplars kept in the image (plain data,
so teaching the router is adding one). Each archetype scores the mean of its best few cosine
similarities; the best archetype names the lead and its partners (PERSONAS.md's table). Only when
the two best scores are within ``AMBIGUOUS_MARGIN`` is the language model asked to break the tie,
with one short generation; a clear-cut question never reaches it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from batos.errors import BadRequest
from batos.llm.embeddings import Embedder

log = logging.getLogger(__name__)

ARCHETYPES: dict[str, str] = {"technical": "BRICK", "emotional": "ROBIN", "factual": "BABS", "system": "ALFRED"}
# Who follows the lead; None: the lead of the next-best archetype among those listed.
PARTNERS: dict[str, tuple[str, ...]] = {"technical": ("ROBIN",), "emotional": ("BRICK",),
                                        "factual": ("BRICK", "ROBIN"), "system": ("BRICK", "ROBIN", "BABS")}
TOP_K = 3
AMBIGUOUS_MARGIN = 0.02
DEPTH_WORDS = 12  # a question of this many words (or of several sentences) gets the persona's facets
MAX_EXEMPLAR_CHARS = 500
TieBreaker = Callable[[str], "str | None"]  # question -> an archetype, or None


@dataclass(frozen=True)
class Exemplar:
    text: str
    archetype: str


def check_exemplar(text: str, archetype: str) -> Exemplar:
    """An exemplar from client input, or BadRequest saying what is wrong."""
    if archetype not in ARCHETYPES:
        raise BadRequest(f"unknown archetype {archetype!r}; known: {', '.join(ARCHETYPES)}")
    text = text.strip() if isinstance(text, str) else ""
    if not text or len(text) > MAX_EXEMPLAR_CHARS:
        raise BadRequest(f"an exemplar is a question of 1 to {MAX_EXEMPLAR_CHARS} characters")
    return Exemplar(text, archetype)


def depth_of(question: str) -> str:
    """``facets`` for a question with substance (long, or several sentences), else ``direct``."""
    sentences = [s for s in re.split(r"[.?!]+\s", question.strip()) if s.strip()]
    return "facets" if len(question.split()) >= DEPTH_WORDS or len(sentences) > 1 else "direct"


class Router:
    """Routes questions against the exemplars ``exemplars()`` returns (read fresh on every route)."""

    def __init__(self, embedder: Embedder, exemplars: Callable[[], list[Exemplar]],
                 tie_breaker: TieBreaker | None = None):
        self.embedder = embedder
        self.exemplars = exemplars
        self.tie_breaker = tie_breaker
        self._vectors: dict[str, np.ndarray] = {}  # exemplar text -> its embedding
        self.model_calls = 0

    def scores(self, question: str) -> dict[str, float]:
        """Each archetype's score for ``question`` (mean of its best TOP_K similarities)."""
        exemplars = self.exemplars()
        self._embed_new([e.text for e in exemplars])
        query = self.embedder.encode_query(question)
        scores = {}
        for archetype in ARCHETYPES:
            rows = [self._vectors[e.text] for e in exemplars if e.archetype == archetype]
            if rows:
                similarities = np.sort(np.stack(rows) @ query)[::-1][:TOP_K]
                scores[archetype] = float(similarities.mean())
        if not scores:
            raise BadRequest("the router has no exemplars; add some with `batos route --teach`")
        return scores

    def route(self, question: str, lead: str | None = None, tie_break: bool = True) -> dict:
        """``{"archetype", "lead", "partners", "scores", "decided_by", "depth"}``; ``lead`` forces
        the lead persona (the partners still follow the archetype); without ``tie_break`` the
        model is never asked."""
        scores = self.scores(question)
        ranked = sorted(scores, key=scores.get, reverse=True)
        archetype, decided_by = ranked[0], "embeddings"
        tied = len(ranked) > 1 and scores[ranked[0]] - scores[ranked[1]] < AMBIGUOUS_MARGIN
        if tied and tie_break and self.tie_breaker:
            self.model_calls += 1
            choice = self.tie_breaker(question)
            if choice in ARCHETYPES:
                archetype, decided_by = choice, "model"
        chosen = lead or ARCHETYPES[archetype]
        return {"archetype": archetype, "lead": chosen, "partners": partners_for(archetype, chosen, ranked),
                "scores": {a: round(s, 4) for a, s in scores.items()}, "decided_by": decided_by,
                "depth": depth_of(question)}

    def stats(self) -> dict:
        return {"exemplars_embedded": len(self._vectors), "model_calls": self.model_calls}

    def warm(self) -> None:
        """Embed the exemplars and a first query now, so that the first route costs what later ones do."""
        self._embed_new([e.text for e in self.exemplars()])
        self.embedder.encode_query("warming up")

    def _embed_new(self, texts: list[str]) -> None:
        new = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if new:
            for text, vector in zip(new, self.embedder.encode(new)):
                self._vectors[text] = vector


def partners_for(archetype: str, lead: str, ranked: list[str]) -> list[str]:
    """The one persona who follows ``lead``: the archetype's partner, or where there is a choice,
    the lead of the best-ranked archetype among the choices."""
    choices = [p for p in PARTNERS[archetype] if p != lead] or [ARCHETYPES[archetype]]
    choices = [p for p in choices if p != lead]
    if len(choices) > 1:
        by_rank = [ARCHETYPES[a] for a in ranked if ARCHETYPES[a] in choices]
        choices = by_rank or choices
    return choices[:1]


def tie_break_prompt(question: str) -> str:
    return ("Classify the question into exactly one kind: technical (build, fix, code, how-to), "
            "emotional (feelings, personal life, motivation), factual (what is, facts, compare, find), "
            "system (about this assistant itself, its efficiency, whether we should do something).\n"
            f"Question: {question}\nAnswer with one word: technical, emotional, factual or system.")


def archetype_in(answer: str) -> str | None:
    """The first archetype named in a model's answer, if any."""
    words = re.findall(r"[a-z]+", answer.lower())
    return next((w for w in words if w in ARCHETYPES), None)
