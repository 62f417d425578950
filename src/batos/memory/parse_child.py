"""The worker documents are parsed in: ``python -I -m batos.memory.parse_child LIMITS``.

A zygote like a method worker's (:mod:`batos.sandbox.zygote`): it loads every parser (the PDF
reader included), confines itself as a sandbox worker does, and serves each document in a child
of its own that can no longer fork. A job is ``{"t": "parse", "n", "name", "data", "max_bytes",
"chunk_words", "overlap_words"}``; the answer ``{"t": "done", "n", "ok": true, "kind", "chunks":
[[text, section, start, kind], ...]}`` or ``{"t": "done", "n", "ok": false, "code", "error"}``.
Untrusted bytes are never parsed in the UVM's process.
"""

from __future__ import annotations

from batos.errors import BatosError
from batos.memory.chunking import chunk_text
from batos.memory.extract import extract
from batos.sandbox.channel import Channel
from batos.sandbox.zygote import become_zygote


def parse_one(channel: Channel) -> None:
    """Serve the one document this child is for."""
    job = channel.receive()
    if not (isinstance(job, dict) and job.get("t") == "parse"):
        return
    done = {"t": "done", "n": job.get("n")}
    try:
        extracted = extract(job["name"], job["data"], job["max_bytes"])
        chunks = chunk_text(extracted.text, job["chunk_words"], job["overlap_words"])
        answer = {**done, "ok": True, "kind": extracted.kind, "chunks": [[c.text, c.section, c.start, c.kind] for c in chunks]}
    except BatosError as exc:
        answer = {**done, "ok": False, "code": exc.code, "error": str(exc)}
    except MemoryError:
        answer = {**done, "ok": False, "code": "too_large", "error": f"{job['name']}: parsing it needs more memory than allowed"}
    except RecursionError:
        answer = {**done, "ok": False, "code": "bad_request", "error": f"{job['name']}: nested too deeply to parse"}
    channel.send(answer)


def warm_up() -> None:
    """Parse a sample of each kind, so that what parsing loads lazily (codecs, the HTML parser's
    pieces, the PDF reader's modules) is loaded while files can still be opened."""
    import io

    from pypdf import PdfWriter

    page = io.BytesIO()
    writer = PdfWriter()
    writer.add_blank_page(72, 72)
    writer.write(page)
    for name, sample in (("x.md", "# T\n\nText. More.\n".encode()), ("x.html", b"<h1>T</h1><p>a &amp; b</p><pre>c</pre>"),
                         ("x.py", b"x = 1\n"), ("x.txt", "\ufeffé".encode())):
        chunk_text(extract(name, sample).text, 200, 40)
    try:
        extract("x.pdf", page.getvalue())
    except BatosError:  # a blank page has no text: the reader's modules are loaded all the same
        pass


def main() -> None:
    become_zygote(warm_up, parse_one)


if __name__ == "__main__":
    main()
