"""A labelled retrieval set made on this machine: one document per standard-library module (its
docstring and its public names' docstrings, as Markdown) and questions in
``bench/retrieval_questions.jsonl``, each labelled with the module that answers it and with its
kind: ``question`` (said in plain words, as a user asks) or ``identifier`` (names a user remembers
from the text, as a developer searches). Nothing is downloaded. Used by
tests/test_memory_quality.py and bench/memory.py."""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Callable

QUESTIONS = Path(__file__).parent.parent / "bench" / "retrieval_questions.jsonl"
MAX_WORDS = 1500
MODES = ("lexical", "vector", "hybrid")


KINDS = ("question", "identifier")


def questions(kind: str | None = None) -> list[dict]:
    """The labelled set, or the part of it of one kind."""
    every = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    return [q for q in every if kind is None or q["kind"] == kind]


def module_document(name: str) -> str:
    """A module's documentation as Markdown: its docstring, then a section per public name."""
    module = importlib.import_module(name)
    parts = [f"# {name}", inspect.cleandoc(module.__doc__ or "")]
    words = len(parts[1].split())
    for attribute in sorted(getattr(module, "__all__", None) or dir(module)):
        value = getattr(module, attribute, None)
        if attribute.startswith("_") or not (inspect.isfunction(value) or inspect.isclass(value) or inspect.isbuiltin(value)):
            continue
        doc = inspect.getdoc(value) or ""
        first = doc.split("\n\n")[0].strip()
        if not first or words > MAX_WORDS:
            continue
        parts.append(f"## {name}.{attribute}\n\n{first}")
        words += len(first.split())
    return "\n\n".join(parts) + "\n"


def write_documents(folder: Path) -> dict[str, Path]:
    """One Markdown file per module the questions name (and a few they do not); module -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    modules = sorted({q["module"] for q in questions()} | {"string", "html", "email", "sqlite3", "operator"})
    paths = {}
    for name in modules:
        path = folder / f"{name}.md"
        path.write_text(module_document(name))
        paths[name] = path
    return paths


def evaluate(search: Callable[[str, str], list[dict]], paths: dict[str, Path],
             kind: str | None = None) -> dict[str, dict[str, float]]:
    """recall@5 and MRR@10 per mode, at the document level, over the set or its part of one
    ``kind``; ``search(question, mode)`` gives hits best first (at least 10)."""
    scores = {}
    for mode in MODES:
        recall, reciprocal = [], []
        for item in questions(kind):
            sources = list(dict.fromkeys(hit["source"] for hit in search(item["question"], mode)))
            wanted = str(paths[item["module"]])
            rank = sources.index(wanted) + 1 if wanted in sources else None
            recall.append(1.0 if rank and rank <= 5 else 0.0)
            reciprocal.append(1.0 / rank if rank and rank <= 10 else 0.0)
        scores[mode] = {"recall@5": sum(recall) / len(recall), "mrr@10": sum(reciprocal) / len(reciprocal)}
    return scores
