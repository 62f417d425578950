"""Contracts of Fractal Memory, stated in prose."""

from zope.interface import Attribute, Interface


class IMemoryService(Interface):
    """Documents in the image, and the search over them.

    A document is recorded whole or not at all: its record, chunks, lexical index entries and
    vectors are written in one transaction. Content already held under the same source (same
    sha256) is not extracted or embedded again. A refused file raises a BatosError whose code and
    message say why, and nothing is written for it. Searching never writes and never re-embeds
    stored chunks; only the query is embedded. The ``op_*`` coroutines serve the wire ops of the
    same names and run their work on threads, never on the event loop.
    """

    embedded_chunks = Attribute("chunks this process has embedded (a restart starts again at 0)")

    def ingest(source, data, progress=None):
        """Take ``data`` (a file's bytes) into memory as ``source``: ``{"source", "status",
        "chunks"}``, status ``added``, ``replaced`` or ``unchanged``. The knowledge weaver then
        summarizes and links the document in the background (and links older documents back to
        it when it is among their closest)."""

    def remember(source, text):
        """Index a finished conversation turn so a persona can recall it."""

    def search(query, k=5, mode="hybrid", diverse=False):
        """Up to ``k`` hits ``{"source", "chunk", "score", "text", "section"}``, best first;
        ``mode`` is hybrid (reciprocal rank fusion of the vector ranking and BM25 over the chunks
        holding every query word), lexical (BM25 over the chunks holding any of them) or vector
        (cosine)."""

    def recall(question, part, k=3, excluding=""):
        """Hits for the mind: from documents (``part="documents"``) or past turns (``"turns"``),
        only those close enough to the question to help, and none whose source starts with
        ``excluding``."""

    def show(chunk_id):
        """A chunk with its document (summary, links), and the ids of its neighbours."""

    def list():
        """Every document, as ``describe`` gives it."""

    def stats():
        """Counts of documents, chunks, vectors and words, the vector search method, and the
        largest file memory takes (``max_bytes``)."""

    def forget(source):
        """Remove a document with its chunks, index entries, vectors and the other documents'
        links to it; NotFound if unknown."""
