"""The process a document is parsed in: ``python -I -m batos.memory.parse_child LIMITS``.

It reads one job (msgpack: ``name``, ``data``, ``max_bytes``, ``chunk_words``, ``overlap_words``)
from its standard input, loads the parser that kind of file needs, confines itself as a sandbox
worker does (:func:`batos.sandbox.confine.confine`, then no forking at all), extracts and chunks the
text, writes one msgpack answer to its standard output and exits: ``{"ok": true, "kind", "chunks":
[[text, section, start, kind], ...]}`` or ``{"ok": false, "code", "error"}``. Untrusted bytes are
never parsed in the UVM's process.
"""

from __future__ import annotations

import json
import os
import sys

import ormsgpack

from batos.errors import BatosError
from batos.memory.chunking import chunk_text
from batos.memory.extract import extract, kind_of
from batos.sandbox.confine import SANDBOX_UID, confine, load_libseccomp, seal_call


def main() -> None:
    limits = json.loads(sys.argv[1])
    job = ormsgpack.unpackb(sys.stdin.buffer.read())
    warm_up()
    if kind_of(job["name"]) == "pdf":
        load_pdf_reader()
    lib = load_libseccomp()
    applied, missing = confine(limits["memory_bytes"], limits["cpu_seconds"], 8, limits.get("uid", SANDBOX_UID), lib)
    sealed = seal_call(lib)
    try:
        extracted = extract(job["name"], job["data"], job["max_bytes"])
        chunks = chunk_text(extracted.text, job["chunk_words"], job["overlap_words"])
        answer = {"ok": True, "kind": extracted.kind, "confined": applied, "missing": missing, "sealed": sealed,
                  "chunks": [[c.text, c.section, c.start, c.kind] for c in chunks]}
    except BatosError as exc:
        answer = {"ok": False, "code": exc.code, "error": str(exc)}
    except MemoryError:
        answer = {"ok": False, "code": "too_large", "error": f"{job['name']}: parsing it needs more memory than allowed"}
    except RecursionError:
        answer = {"ok": False, "code": "bad_request", "error": f"{job['name']}: nested too deeply to parse"}
    reply = memoryview(ormsgpack.packb(answer))
    while reply:
        reply = reply[os.write(1, reply):]


def warm_up() -> None:
    """Parse a sample of each kind of text, so that what parsing loads lazily (codecs, the HTML
    parser's pieces) is loaded while files can still be opened."""
    for name, sample in (("x.md", "# T\n\nText. More.\n"), ("x.html", "<h1>T</h1><p>a &amp; b</p><pre>c</pre>"),
                         ("x.py", "x = 1\n"), ("x.txt", "\ufeffé")):
        chunk_text(extract(name, sample.encode("utf-8")).text, 200, 40)


def load_pdf_reader() -> None:
    """Read a small PDF, so that every module reading one needs is loaded while files can still
    be opened."""
    import io

    from pypdf import PdfReader, PdfWriter

    page = io.BytesIO()
    writer = PdfWriter()
    writer.add_blank_page(72, 72)
    writer.write(page)
    for each in PdfReader(io.BytesIO(page.getvalue())).pages:
        each.extract_text()


if __name__ == "__main__":
    main()
