"""Chunking that follows a document's structure: headings, paragraphs, fenced code blocks.

A heading starts a new chunk and names the section every chunk under it belongs to. Paragraphs
are gathered until a chunk would pass ``max_words``; a paragraph longer than that is split at
sentence ends (a sentence longer still, at words). A fenced code block is never split unless it
alone is over the limit, and then only between lines. Consecutive prose chunks of one section
overlap by up to ``overlap_words`` words, so a passage cut at a boundary is found whole in one of
them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FENCE = re.compile(r"^\s*(```|~~~)")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Block:
    kind: str  # heading, prose or code
    text: str
    start: int  # offset of its first character in the document
    level: int = 0  # a heading's depth


@dataclass(frozen=True)
class Chunk:
    text: str
    section: str  # the headings above it, outermost first, joined by " > " ("" before any heading)
    start: int  # offset in the document of the paragraph or code block its own text begins in
    kind: str  # prose or code

    def headed_text(self) -> str:
        """What the indexes see, lexical and vector alike: the section's headings, then the text."""
        return f"{self.section}\n{self.text}" if self.section else self.text



def markdown_heading(line: str) -> tuple[int, str] | None:
    """(level, title) of an ATX heading line (``## Title ##``), or None; linear in the line
    (a regex for it backtracks cubically on a long run of spaces)."""
    level = len(line) - len(line.lstrip("#"))
    if not 1 <= level <= 6 or len(line) == level or not line[level].isspace():
        return None
    title = line[level:].strip()
    closed = title.rstrip("#")
    if closed != title and (not closed or closed[-1].isspace()):
        title = closed.rstrip()
    return (level, title) if title else None

def blocks(text: str) -> list[Block]:
    """The document as headings, paragraphs and fenced code blocks, in order."""
    found: list[Block] = []
    paragraph: list[str] = []
    paragraph_start = 0
    offset = 0
    lines = text.splitlines(keepends=True)
    i = 0

    def close_paragraph() -> None:
        if paragraph and "".join(paragraph).strip():
            found.append(Block("prose", "".join(paragraph).strip(), paragraph_start))
        paragraph.clear()

    while i < len(lines):
        line = lines[i]
        heading = markdown_heading(line)
        if FENCE.match(line):
            close_paragraph()
            fence, start, body = FENCE.match(line).group(1), offset, [line]
            offset += len(line)
            i += 1
            while i < len(lines):
                closing = lines[i]
                body.append(closing)
                offset += len(closing)
                i += 1
                if closing.strip().startswith(fence):
                    break
            found.append(Block("code", "".join(body).rstrip("\n"), start))
            continue
        if heading:
            close_paragraph()
            found.append(Block("heading", heading[1], offset, heading[0]))
        elif not line.strip():
            close_paragraph()
        else:
            if not paragraph:
                paragraph_start = offset
            paragraph.append(line)
        offset += len(line)
        i += 1
    close_paragraph()
    return found


def chunk_text(text: str, max_words: int = 200, overlap_words: int = 40) -> list[Chunk]:
    """``text`` in chunks of at most ``max_words`` words (plus overlap), following its structure."""
    if max_words < 1 or not 0 <= overlap_words < max_words:
        raise ValueError("max_words must be at least 1, and overlap_words between 0 and max_words - 1")
    chunks: list[Chunk] = []
    headings: list[tuple[int, str]] = []
    pending: list[tuple[str, int]] = []  # (piece of prose, its offset) waiting to become a chunk
    carried = ""  # the end of the section's last prose chunk, to overlap the next

    def section() -> str:
        return " > ".join(title for _, title in headings)

    def flush() -> None:
        nonlocal carried
        if not pending:
            return
        body = "\n\n".join(piece for piece, _ in pending)
        chunks.append(Chunk(f"{carried} {body}".strip() if carried else body, section(), pending[0][1], "prose"))
        carried = " ".join(body.split()[-overlap_words:]) if overlap_words else ""
        pending.clear()

    for block in blocks(text):
        if block.kind == "heading":
            flush()
            carried = ""
            headings = [(level, title) for level, title in headings if level < block.level] + [(block.level, block.text)]
        elif block.kind == "code":
            flush()
            chunks.extend(Chunk(part, section(), start, "code") for part, start in _code_parts(block, max_words))
        else:
            for piece, start in _prose_parts(block, max_words):
                if pending and _words(pending) + len(piece.split()) > max_words:
                    flush()
                pending.append((piece, start))
    flush()
    return chunks


def _words(pieces: list[tuple[str, int]]) -> int:
    return sum(len(piece.split()) for piece, _ in pieces)


def _prose_parts(block: Block, max_words: int) -> list[tuple[str, int]]:
    """A paragraph as pieces of at most ``max_words`` words: whole, or cut at sentence ends."""
    if len(block.text.split()) <= max_words:
        return [(block.text, block.start)]
    parts: list[tuple[str, int]] = []
    current: list[str] = []
    for sentence in SENTENCE_END.split(block.text):
        words = sentence.split()
        cut = 0
        while len(words) - cut > max_words:  # one very long sentence: cut it at words (never re-copying the rest)
            parts.append((" ".join(words[cut:cut + max_words]), block.start))
            cut += max_words
        words = words[cut:]
        if current and len(" ".join(current).split()) + len(words) > max_words:
            parts.append((" ".join(current), block.start))
            current = []
        if words:
            current.append(" ".join(words))
    if current:
        parts.append((" ".join(current), block.start))
    return parts


def _code_parts(block: Block, max_words: int) -> list[tuple[str, int]]:
    """A code block whole, or (over ``max_words``) cut between lines."""
    if len(block.text.split()) <= max_words:
        return [(block.text, block.start)]
    parts, current, start, offset = [], [], block.start, block.start
    for line in block.text.splitlines(keepends=True):
        if current and len("".join(current).split()) + len(line.split()) > max_words:
            parts.append(("".join(current).rstrip("\n"), start))
            current, start = [], offset
        current.append(line)
        offset += len(line)
    if current:
        parts.append(("".join(current).rstrip("\n"), start))
    return parts
