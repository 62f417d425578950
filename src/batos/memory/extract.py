"""Text out of the files memory accepts: plain text, Markdown, HTML, PDF and source code.

``extract`` either returns the document's text, in the Markdown-like form the chunker reads
(headings as ``#`` lines, source code as one fenced block), or raises ``Refused`` saying why the
file is not taken. A refused file leaves nothing behind.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from html.parser import HTMLParser

from batos.errors import BadRequest, TooLarge

TEXT_SUFFIXES = frozenset({".txt", ".text", ".rst", ".log", ".csv"})
MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})
HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
PDF_SUFFIXES = frozenset({".pdf"})
SOURCE_SUFFIXES = frozenset({
    ".py", ".pyi", ".js", ".ts", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go", ".java", ".rb",
    ".sh", ".sql", ".toml", ".yaml", ".yml", ".json", ".cfg", ".ini", ".css", ".lua", ".pl", ".kt",
})
ACCEPTED_SUFFIXES = TEXT_SUFFIXES | MARKDOWN_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES | SOURCE_SUFFIXES
DEFAULT_MAX_BYTES = 20 * 1024**2


class Refused(BadRequest):
    """This file is not taken into memory; the message says why. Nothing was written."""


@dataclass(frozen=True)
class Extracted:
    kind: str  # text, markdown, html, pdf or source
    text: str


def kind_of(name: str) -> str | None:
    """The kind a file of this name is read as, or None when memory does not take it."""
    suffix = os.path.splitext(name)[1].lower()
    for kind, suffixes in (("text", TEXT_SUFFIXES), ("markdown", MARKDOWN_SUFFIXES), ("html", HTML_SUFFIXES),
                           ("pdf", PDF_SUFFIXES), ("source", SOURCE_SUFFIXES)):
        if suffix in suffixes:
            return kind
    return None


def too_large(name: str, size: int, max_bytes: int) -> TooLarge:
    """The refusal of a file of ``size`` bytes over the limit."""
    return TooLarge(f"{name}: {size} bytes is over the limit of {max_bytes} (BATOS_MEMORY_MAX_BYTES)")


def extract(name: str, data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Extracted:
    """The text of file ``name`` whose content is ``data``; ``Refused`` (or ``TooLarge``) if not taken."""
    kind = kind_of(name)
    if kind is None:
        raise Refused(f"{name}: memory takes text, Markdown, HTML, PDF and source files "
                      f"({', '.join(sorted(ACCEPTED_SUFFIXES))}), not {os.path.splitext(name)[1] or 'files without a suffix'}")
    if len(data) > max_bytes:
        raise too_large(name, len(data), max_bytes)
    text = _pdf_text(name, data) if kind == "pdf" else _decoded(name, data)
    if kind == "html":
        text = html_text(text)
    elif kind == "source":
        text = f"# {os.path.basename(name)}\n\n```\n{text.strip(chr(10))}\n```\n"
    if not text.strip() or not any(ch.isalnum() for ch in text):
        raise Refused(f"{name}: there is no text in it")
    return Extracted(kind, text)


def _decoded(name: str, data: bytes) -> str:
    if b"\x00" in data:
        raise Refused(f"{name}: this is a binary file, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Refused(f"{name}: not UTF-8 text (byte {exc.start} cannot be decoded)") from None


def _pdf_text(name: str, data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
        raise Refused(f"{name}: the PDF cannot be read ({type(exc).__name__}: {exc})") from None
    return "\n\n".join(page.strip() for page in pages if page.strip())


class _HTMLText(HTMLParser):
    SKIPPED = frozenset({"script", "style", "noscript", "template", "head"})
    BLOCKS = frozenset({"p", "div", "li", "br", "tr", "section", "article", "blockquote", "table", "ul", "ol"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0
        self.in_pre = False

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.SKIPPED:
            self.skipping += 1
        elif len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self.out.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag == "pre":
            self.in_pre = True
            self.out.append("\n\n```\n")
        elif tag in self.BLOCKS:
            self.out.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIPPED:
            self.skipping = max(0, self.skipping - 1)
        elif len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self.out.append("\n\n")
        elif tag == "pre":
            self.in_pre = False
            self.out.append("\n```\n\n")

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        self.out.append(data if self.in_pre else " ".join(data.split()) + (" " if data[-1:].isspace() else ""))


def html_text(html: str) -> str:
    """An HTML page's visible text, headings kept as ``#`` lines and ``<pre>`` as code blocks."""
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    lines = [line.strip() if not line.startswith("    ") else line for line in "".join(parser.out).split("\n")]
    return "\n".join(lines)
