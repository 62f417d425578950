"""BABS's knowledge weaver: a short summary of a new document and links to its closest neighbours.

Both come from the vectors already stored, with no model call (the model is the bottleneck, and
a document's own sentences closest to its centre say what it is about better than this size of
model paraphrases them). The summary is the opening of the chunk nearest the document's mean
vector; the links are the documents whose mean vectors are closest to it, and an older document
whose own links are fewer or weaker gets a link back.
"""

from __future__ import annotations

import re

import numpy as np

from batos.memory.catalog import Catalog

SUMMARY_CHARS = 300
LINKS = 3
MIN_LINK_SIMILARITY = 0.25  # MiniLM puts unrelated paragraphs mostly below 0.15
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def weave(catalog: Catalog, source: str) -> None:
    """Give ``source``'s document its summary, centre and links (in the caller's transaction)."""
    document = catalog.documents.get(source)
    if document is None or not document.chunk_ids:
        return
    vectors = catalog.document_vectors(document)
    if not len(vectors):
        return
    centre = _unit(vectors.mean(axis=0))
    nearest = document.chunk_ids[int(np.argmax(vectors @ centre))]
    document.summary = summary_of(catalog.chunks[nearest].text)
    document.centre = centre.astype(np.float32).tobytes()
    links = []
    for other in catalog.documents.values():
        other_centre = getattr(other, "centre", None)
        if other.source == source or other_centre is None:
            continue
        similarity = float(np.frombuffer(other_centre, dtype=np.float32) @ centre)
        if similarity >= MIN_LINK_SIMILARITY:
            links.append((other.source, similarity))
            _offer_link(other, source, similarity)
    document.links = _closest(links)


def _offer_link(document, source: str, similarity: float) -> None:
    """Link ``document`` to ``source`` too, if that is among its LINKS closest."""
    links = _closest([link for link in document.links if link[0] != source] + [(source, similarity)])
    if links != tuple(document.links):
        document.links = links


def _closest(links: list[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted(links, key=lambda link: -link[1])[:LINKS])


def summary_of(text: str) -> str:
    """The first sentences of ``text`` that fit in SUMMARY_CHARS (at least one, cut if it must be)."""
    flat = " ".join(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("```"))
    summary = ""
    for sentence in _SENTENCE_END.split(flat):
        if summary and len(summary) + len(sentence) + 1 > SUMMARY_CHARS:
            break
        summary = f"{summary} {sentence}".strip()
    return summary[:SUMMARY_CHARS]


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm else vector
