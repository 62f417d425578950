"""The router (the seeds' CP-MoE): a question's archetype, and who answers it.

A question is embedded once and scored by a linear head (softmax regression) trained on labelled
exemplars kept in the image (plain data, so teaching the router is adding one; the head is trained
again, in milliseconds, whenever the exemplars change). A question that is nearly one exemplar's
text takes that exemplar's archetype, so a taught exemplar counts at once. Only when the head's two
best archetypes are close does a hint in its words (``my notes`` → factual) or, closer still, the
language model with one short generation decide; a clear-cut question never reaches it. A research
or retrieval ask ("find what my notes say ...", "gather the facts ... with references") is BABS's,
an ask for a plan or steps to make something BRICK's, whatever the head says.
The best archetype names the lead and its partners (PERSONAS.md's table).
"""

from __future__ import annotations

import logging
import re
import threading
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
# Between the head's two best probabilities: below HINT_MARGIN a hint in the words decides; below
# MODEL_MARGIN, with no hint, the model does. On the labelled and dev sets (188 questions) the head
# was right on 6 of the 12 below 0.05 and the 1.5B model on 9; between 0.05 and 0.1 the head on 14
# of 15 and the model on 11.
HINT_MARGIN, MODEL_MARGIN = 0.1, 0.05
EXEMPLAR_MATCH = 0.92  # cosine similarity at which a question counts as an exemplar's own text
HEAD_L2, HEAD_STEPS, HEAD_RATE = 0.01, 800, 5.0
MEMORY = r"(my|our|the) (notes?|notebook|documents?|docs|files|knowledge ?base|saved \w+|uploads?)"
# Words that say where the answer lies. A research or retrieval ask (a verb that looks something up
# and what it looks in or for) is BABS's whatever its topic; the others count only when the head is
# unsure between the two archetypes it ranks best.
RESEARCH = re.compile(rf"\b(find|search|look (up|through|in)|gather|collect|list|summari[sz]e|what (do|does|did))\b"
                      rf"[^.?!]{{0,60}}?\b({MEMORY}|facts|findings|research|studies|sources|references|evidence)\b"
                      rf"|\baccording to {MEMORY}\b", re.I)
# An ask for a plan or steps to make something is BRICK's (PERSONAS.md: "how do I build/fix X").
PLANNING = re.compile(r"\b(give me|make|write|draw up|sketch|i need) (me )?an? (step[- ]by[- ]step |detailed |simple )?"
                      r"plan (to|for)\b|\bplan the steps\b|\bstep[- ]by[- ]step\b", re.I)
DECISIVE: tuple[tuple[str, re.Pattern[str]], ...] = (("factual", RESEARCH), ("technical", PLANNING))
HINTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("factual", re.compile(rf"\b{MEMORY}\b|\bwith (sources|references)\b", re.I)),
    ("system", re.compile(r"\b(batos|your (image|methods?|cycles?|personas?|router|model|memory|audits?))\b", re.I)),
)
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
        # (the exemplars it learned, the head, their embeddings as one matrix)
        self._head: tuple[tuple, LinearHead, np.ndarray] | None = None
        self._learning = threading.Lock()  # routes at once share one embedding and one training
        self.model_calls = 0
        self.head_trainings = 0
        self.warmed = False

    def route(self, question: str, lead: str | None = None, tie_break: bool = True) -> dict:
        """``{"archetype", "lead", "partners", "scores", "decided_by", "top", "cue", "exemplar",
        "depth"}``: ``decided_by`` is ``exemplar`` (a known question), ``embeddings`` (the head),
        ``cue`` or ``model`` (the head was unsure; a taught exemplar outranks the cues); ``top`` the
        two best archetypes with their scores; ``exemplar`` the taught text matched. ``lead`` forces
        the lead persona (the partners still follow the archetype); without ``tie_break`` the model
        is never asked."""
        scores, nearest = self._score(question)
        ranked = sorted(scores, key=scores.get, reverse=True)
        archetype, decided_by, cue = ranked[0], "embeddings", None
        decisive = cue_in(question, DECISIVE, list(scores))
        if nearest is not None:
            archetype, decided_by = nearest.archetype, "exemplar"
        elif decisive is not None:
            (archetype, cue), decided_by = decisive, "cue"
        elif len(ranked) > 1 and (margin := scores[ranked[0]] - scores[ranked[1]]) < HINT_MARGIN:
            hint = cue_in(question, HINTS, ranked[:2])
            if hint is not None:
                (archetype, cue), decided_by = hint, "cue"
            elif margin < MODEL_MARGIN and tie_break and self.tie_breaker:
                self.model_calls += 1
                choice = self.tie_breaker(question)
                if choice in ARCHETYPES:
                    archetype, decided_by = choice, "model"
        chosen = lead or ARCHETYPES[archetype]
        return {"archetype": archetype, "lead": chosen, "partners": partners_for(archetype, chosen, ranked),
                "scores": {a: round(s, 4) for a, s in scores.items()}, "decided_by": decided_by,
                "top": [[a, round(scores[a], 4)] for a in ranked[:2]], "cue": cue,
                "exemplar": nearest.text if nearest is not None else None, "depth": depth_of(question)}

    def stats(self) -> dict:
        return {"exemplars_embedded": len(self._vectors), "model_calls": self.model_calls,
                "head_trainings": self.head_trainings, "warm": self.warmed}

    def warm(self) -> None:
        """Embed the exemplars, train the head and embed a first query now, so that the first
        route costs what later ones do."""
        self._current_head(self.exemplars())
        self.embedder.encode_query("warming up")
        self.warmed = True

    def _score(self, question: str) -> tuple[dict[str, float], Exemplar | None]:
        """The head's probabilities, and the exemplar whose text ``question`` nearly is (when
        all such exemplars agree on one archetype)."""
        exemplars = self.exemplars()
        if not exemplars:
            raise BadRequest("the router has no exemplars; add some with `batos route --teach`")
        head, matrix = self._current_head(exemplars)
        query = self.embedder.encode_query(question)
        similarities = matrix @ query
        close = [exemplars[i] for i in np.flatnonzero(similarities >= EXEMPLAR_MATCH)]
        nearest = None
        if close and len({e.archetype for e in close}) == 1:
            nearest = exemplars[int(np.argmax(similarities))]
        return head.probabilities(query), nearest

    def learn(self, text: str) -> None:
        """Embed a newly taught exemplar now (so the next route, anyone's, does not)."""
        with self._learning:
            self._embed_new([text])

    def _current_head(self, exemplars: list[Exemplar]) -> tuple[LinearHead, np.ndarray]:
        """The head for ``exemplars`` and their embeddings, trained again only when they changed."""
        key = tuple((e.text, e.archetype) for e in exemplars)
        with self._learning:
            if self._head is None or self._head[0] != key:
                self._embed_new([e.text for e in exemplars])
                known = self._head[0] if self._head else ()
                start = self._head[1] if known and key[:len(known)] == known else None  # exemplars were added
                matrix = np.stack([self._vectors[e.text] for e in exemplars]).astype(np.float32)
                self._head = (key, LinearHead.train(matrix, [e.archetype for e in exemplars], start), matrix)
                self.head_trainings += 1
            return self._head[1], self._head[2]

    def _embed_new(self, texts: list[str]) -> None:
        new = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if new:
            for text, vector in zip(new, self.embedder.encode(new)):
                self._vectors[text] = vector


@dataclass(frozen=True)
class LinearHead:
    """Softmax regression from an embedding to the archetypes that have exemplars."""

    archetypes: tuple[str, ...]
    weights: np.ndarray
    bias: np.ndarray

    @classmethod
    def train(cls, vectors: np.ndarray, labels: list[str], start: "LinearHead | None" = None) -> "LinearHead":
        """A head for these exemplars; from ``start`` (a head for most of them, say before one was
        taught) an eighth of the steps are enough."""
        archetypes = tuple(a for a in ARCHETYPES if a in labels)
        vectors = vectors.astype(np.float32)
        targets = np.eye(len(archetypes), dtype=np.float32)[[archetypes.index(label) for label in labels]]
        steps = HEAD_STEPS
        if start is not None and start.archetypes == archetypes:
            weights, bias, steps = start.weights.copy(), start.bias.copy(), HEAD_STEPS // 8
        else:
            weights = np.zeros((vectors.shape[1], len(archetypes)), dtype=np.float32)
            bias = np.zeros(len(archetypes), dtype=np.float32)
        for _ in range(steps):  # full-batch gradient descent: a few hundred exemplars, milliseconds
            gradient = (softmax(vectors @ weights + bias) - targets) / len(labels)
            weights -= HEAD_RATE * (vectors.T @ gradient + HEAD_L2 * weights)
            bias -= HEAD_RATE * gradient.sum(axis=0)
        return cls(archetypes, weights, bias)

    def probabilities(self, vector: np.ndarray) -> dict[str, float]:
        return dict(zip(self.archetypes, softmax(vector @ self.weights + self.bias).tolist()))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def cue_in(question: str, cues: tuple[tuple[str, re.Pattern[str]], ...],
           candidates: list[str]) -> tuple[str, str] | None:
    """The first archetype among ``candidates`` whose cue ``question`` holds, and the words that matched."""
    for archetype, pattern in cues:
        found = pattern.search(question) if archetype in candidates else None
        if found:
            return archetype, found.group(0)
    return None


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
