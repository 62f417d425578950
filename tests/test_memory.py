"""Fractal Memory through a real UVM: ingestion of each kind, search, restart, replacement,
forgetting, bad input and a kill -9 in the middle of ingestion."""

from __future__ import annotations

import json
import random
import threading
import time

import pytest

from batos.client import RemoteError
from batos.memory.chunking import chunk_text
from batos.memory.extract import extract
from conftest import Server, run_cli

pytestmark = pytest.mark.slow

MARKDOWN = """# Blob storage

Model weights are kept as ZODB blobs, and the committed files are mapped without a copy.

## Loading

```python
def load(bundle):
    return mmap_committed_file(bundle.blob)
```

A quarantined bundle is never loaded by the awakening thread.
"""
HTML = """<html><head><title>Bridge</title><style>p {color: red}</style><script>var hidden = "zebra";</script></head>
<body><h1>The Synaptic Bridge</h1><p>Replies travel back through the ROUTER socket's envelope of
the pelican client.</p></body></html>"""
TEXT = "The heartbeat of ALFRED audits the log every hour and proposes bounded missions.\n"
SOURCE = "def gravitational_constant():\n    \"\"\"Newton's constant in SI units.\"\"\"\n    return 6.674e-11\n"
PDF_TEXT = "The lighthouse keeper counts seventeen albatrosses at dawn over the harbour."


def write_pdf(path, text: str) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.multi_cell(0, 10, text)
    pdf.output(str(path))


def documents(folder):
    folder.mkdir(exist_ok=True)
    files = {"notes.md": MARKDOWN, "bridge.html": HTML, "heartbeat.txt": TEXT, "physics.py": SOURCE}
    for name, text in files.items():
        (folder / name).write_text(text)
    write_pdf(folder / "harbour.pdf", PDF_TEXT)
    return {name: folder / name for name in [*files, "harbour.pdf"]}


def cli_json(server: Server, *args: str) -> tuple[int, object]:
    done = run_cli(*args, "--endpoint", server.endpoint, "--json", timeout=300)
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else done.stderr


def top_source(server: Server, query: str, mode: str = "hybrid") -> str | None:
    with server.client() as client:
        hits = client.memory_search(query, k=3, mode=mode)
    return hits[0]["source"] if hits else None


def test_each_kind_is_found_by_a_phrase_and_survives_a_restart_without_re_embedding(tmp_path):
    files = documents(tmp_path / "docs")
    server = Server(tmp_path / "image.fs").start()
    try:
        code, results = cli_json(server, "memory", "ingest", str(tmp_path / "docs"))
        assert code == 0, results
        assert {r["source"]: r["status"] for r in results} == {str(p): "added" for p in files.values()}
        phrases = {"notes.md": "mmap_committed_file", "bridge.html": "pelican client envelope",
                   "heartbeat.txt": "ALFRED heartbeat audits the log", "physics.py": "gravitational constant",
                   "harbour.pdf": "seventeen albatrosses lighthouse"}
        for name, phrase in phrases.items():
            assert top_source(server, phrase) == str(files[name]), phrase
        code, hits = cli_json(server, "memory", "search", "hidden zebra", "--mode", "lexical")
        assert code == 0 and hits == []  # script text is not the page's text
        code, hits = cli_json(server, "memory", "search", "albatrosses", "--k", "1")
        assert [set(h) for h in hits] == [{"source", "chunk", "score", "text"}]
        assert "seventeen albatrosses" in hits[0]["text"]
        with server.client() as client:
            before = client.call("memory_stats")
            listing = client.call("memory_list")
        assert before["embedded_chunks_this_process"] == before["chunks"] == before["vectors"] > 0
    finally:
        server.stop()
    server = Server(tmp_path / "image.fs").start()
    try:
        for name, phrase in phrases.items():
            assert top_source(server, phrase) == str(files[name]), phrase
        with server.client() as client:
            after = client.call("memory_stats")
            assert client.call("memory_list") == listing
        assert after["embedded_chunks_this_process"] == 0  # nothing was embedded again
        assert (after["documents"], after["chunks"], after["vectors"]) == (5, before["chunks"], before["vectors"])
    finally:
        server.stop()


def test_same_file_is_a_no_op_a_changed_file_replaces_and_forget_removes_everything(tmp_path):
    note = tmp_path / "note.md"
    note.write_text("# Ferns\n\nThe quokka garden grows ferns beside the aqueduct.\n")
    server = Server(tmp_path / "image.fs").start()
    try:
        with server.client() as client:
            assert client.memory_ingest([note])[0]["status"] == "added"
            assert client.memory_ingest([note])[0]["status"] == "unchanged"
            assert client.call("memory_stats")["embedded_chunks_this_process"] == 1
            note.write_text("# Ferns\n\nThe wombat orchard grows plums beside the viaduct.\n")
            assert client.memory_ingest([note])[0]["status"] == "replaced"
            assert client.memory_search("quokka aqueduct", mode="lexical") == []
            assert client.memory_search("wombat viaduct", mode="lexical")[0]["source"] == str(note)
            stats = client.call("memory_stats")
            assert (stats["documents"], stats["chunks"], stats["vectors"]) == (1, 1, 1)
            code, forgotten = cli_json(server, "memory", "forget", str(note))
            assert code == 0 and forgotten == {"source": str(note), "chunks": 1}
            stats = client.call("memory_stats")
            assert (stats["documents"], stats["chunks"], stats["vectors"]) == (0, 0, 0)
            for mode in ("lexical", "vector", "hybrid"):
                assert client.memory_search("wombat viaduct", mode=mode) == []
            with pytest.raises(RemoteError) as refused:
                client.call("memory_forget", source=str(note))
            assert refused.value.code == "not_found"
    finally:
        server.stop()


def test_bad_input_is_refused_clearly_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.md").write_text("")
    (bad / "blank.txt").write_text("   \n\n  ")
    (bad / "binary.txt").write_bytes(b"text\x00\x01\x02 and more")
    (bad / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (bad / "huge.txt").write_text("word " * 400)
    (bad / "corrupt.pdf").write_bytes(b"%PDF-1.4\n this is not a real pdf at all \n%%EOF")
    (bad / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    server = Server(tmp_path / "image.fs", env={"BATOS_MEMORY_MAX_BYTES": "1000"}).start()
    try:
        expected = {"empty.md": ("bad_request", "no text"), "blank.txt": ("bad_request", "no text"),
                    "binary.txt": ("bad_request", "binary"), "latin1.txt": ("bad_request", "UTF-8"),
                    "huge.txt": ("too_large", "over the limit"), "corrupt.pdf": ("bad_request", "PDF"),
                    "picture.png": ("bad_request", ".png")}
        for name, (code_expected, words) in expected.items():
            code, results = cli_json(server, "memory", "ingest", str(bad / name))
            assert code == 1, (name, results)
            assert results[0]["status"] == "refused" and results[0]["code"] == code_expected, (name, results)
            assert words in results[0]["error"], (name, results)
        with server.client() as client:
            uploads = client.stats()["messages"].get("upload", 0)
            assert client.memory_ingest([bad / "huge.txt"])[0]["code"] == "too_large"
            assert client.stats()["messages"].get("upload", 0) == uploads  # refused before it is sent
        done = run_cli("memory", "ingest", str(tmp_path / "missing.md"), "--endpoint", server.endpoint)
        assert done.returncode == 2 and "no such file or folder" in done.stderr
        with server.client() as client:
            for fields in ({"query": ""}, {"query": "x", "k": 0}, {"query": "x", "mode": "fuzzy"}):
                with pytest.raises(RemoteError) as refused:
                    client.call("memory_search", **fields)
                assert refused.value.code == "bad_request"
            with pytest.raises(RemoteError) as refused:
                client.call("memory_show", chunk=12345)
            assert refused.value.code == "not_found"
            stats = client.call("memory_stats")
        assert (stats["documents"], stats["chunks"], stats["vectors"], stats["lexical_words"]) == (0, 0, 0, 0)
        assert stats["embedded_chunks_this_process"] == 0
    finally:
        server.stop()


def test_show_gives_the_chunk_its_neighbours_and_the_woven_summary_and_links(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    long = "# Bees\n\n" + "\n\n".join(f"Honey bees dance paragraph {n} to tell the hive where nectar is." * 6
                                      for n in range(12))
    (folder / "bees.md").write_text(long)
    (folder / "wasps.md").write_text("# Wasps\n\nPaper wasps build nests and hunt honey bees near the hive.\n")
    server = Server(tmp_path / "image.fs").start()
    try:
        with server.client() as client:
            client.memory_ingest([folder / "bees.md"])
            client.memory_ingest([folder / "wasps.md"])
            hit = client.memory_search("paper wasps nests", k=1)[0]
            deadline = time.monotonic() + 30
            while not (shown := client.call("memory_show", chunk=hit["chunk"]))["document"]["summary"]:
                assert time.monotonic() < deadline, "the weaver never summarized the document"
                time.sleep(0.2)
            bees = client.memory_search("honey bees dance paragraph 5", k=1)[0]
            middle = client.call("memory_show", chunk=bees["chunk"])
        assert shown["document"]["source"] == str(folder / "wasps.md")
        assert "Paper wasps" in shown["document"]["summary"]
        assert [link["source"] for link in shown["document"]["links"]] == [str(folder / "bees.md")]
        assert middle["document"]["chunks"] > 2
        # the older document got a link back (and loses it below, with the newer one)
        assert [link["source"] for link in middle["document"]["links"]] == [str(folder / "wasps.md")]
        assert middle["previous"] is not None or middle["next"] is not None
        done = run_cli("memory", "show", str(hit["chunk"]), "--endpoint", server.endpoint)
        assert done.returncode == 0 and "summary: Paper wasps" in done.stdout and "bees.md" in done.stdout
        with server.client() as client:
            client.call("memory_forget", source=str(folder / "wasps.md"))
            assert client.call("memory_show", chunk=bees["chunk"])["document"]["links"] == []
    finally:
        server.stop()


def test_kill_9_during_ingestion_leaves_whole_documents_or_none(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    expected = {}
    for n in range(6):
        text = f"# Document {n}\n\n" + "\n\n".join(
            f"Section {n}.{p} talks about topic {random.Random(n * 100 + p).random():.6f} at some length. " * 8
            for p in range(60))
        path = folder / f"doc{n}.md"
        path.write_text(text)
        expected[str(path)] = len(chunk_text(extract(path.name, text.encode()).text))
    image = tmp_path / "image.fs"
    for round_ in range(2):
        server = Server(image).start()
        sending = threading.Thread(target=lambda: _ingest_quietly(server, folder), daemon=True)
        sending.start()
        if round_:  # the second kill comes while a later document is being embedded or committed
            _wait_for_documents(server, 1)
            time.sleep(random.uniform(0, 1))
        else:
            time.sleep(random.uniform(1, 6))
        server.kill()
        sending.join(timeout=1)  # its call waits for a reply that will never come; it is a daemon
        assert run_cli("doctor", "--image", str(image)).returncode == 0
        server = Server(image).start()
        try:
            with server.client() as client:
                listing = client.call("memory_list")
                stats = client.call("memory_stats")
            for document in listing:
                assert document["chunks"] == expected[document["source"]], document
            assert stats["chunks"] == stats["vectors"] == sum(d["chunks"] for d in listing)
        finally:
            server.stop()
    assert len(listing) >= 1  # the second round got at least one document in before its kill


def _wait_for_documents(server: Server, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while client.call("memory_stats")["documents"] < count:
            assert time.monotonic() < deadline, "no document was ingested in time"
            time.sleep(0.05)


def _ingest_quietly(server: Server, folder) -> None:
    try:
        with server.client(timeout=60) as client:
            client.memory_ingest([folder])
    except Exception:
        pass  # the server was killed under it


def test_ask_grounds_babs_in_an_ingested_document_and_robin_in_past_turns(tmp_path, mind_server):
    from conftest import ScriptedMind, uvm

    notes = tmp_path / "storage-notes.md"
    notes.write_text("# Blob storage\n\nOur model weights are stored as ZODB blobs in the folder image.fs.blob, "
                     "and the committed blob files are memory-mapped without a copy.\n")
    other = tmp_path / "garden.md"
    other.write_text("# Garden\n\nTomatoes need six hours of sun and deep watering twice a week.\n")
    server = uvm(tmp_path / "image.fs", mind_server).start()
    try:
        with server.client(timeout=120) as client:
            client.memory_ingest([notes, other])
            answer = client.ask("What do my notes say about blob storage?", persona="BABS", depth="direct")
            babs = answer["turns"][0]
            assert babs["persona"] == "BABS" and babs["state"] == "COMPLETE"
            assert babs["sources"] == [str(notes)]
            prompt = next(body for kind, body in ScriptedMind.requests if kind == "reply")["messages"][-1]["content"]
            assert "memory-mapped without a copy" in prompt and "storage-notes.md" in prompt
            assert "Tomatoes" not in prompt  # an unrelated document is not offered
            assert "general knowledge" not in prompt and "General knowledge" not in babs["text"]
            ScriptedMind.requests.clear()
            events = []
            everest = client.ask("What is the boiling point of water on Mount Everest?", persona="BABS", depth="direct",
                                 on_event=events.append)
            prompt = next(body for kind, body in ScriptedMind.requests if kind == "reply")["messages"][-1]["content"]
            assert "notes hold nothing on this" in prompt and "general knowledge" in prompt  # BABS is told to say so
            babs = everest["turns"][0]  # and whatever the model says, the person is told
            assert babs["text"].endswith(" (General knowledge, not from your notes.)") and babs["sources"] == []
            streamed = "".join(e["text"] for e in events if e.get("cycle") == babs["cycle"] and "text" in e)
            assert streamed == babs["text"]
            ScriptedMind.requests.clear()
            shown = client.call("conversation_show", conversation=answer["conversation"])
            assert shown["exchanges"][0]["turns"][0]["sources"] == [str(notes)]
            # every finished turn is indexed: a later question recalls it for ROBIN
            ScriptedMind.requests.clear()
            later = client.ask("How did you feel about the blob storage answer earlier?", persona="ROBIN", depth="direct")
            robin = later["turns"][0]
            assert robin["sources"] and robin["sources"][0].startswith(f"conversation:{answer['conversation']}/0/")
            # a partner is never shown the turns of the exchange she answers in (BRICK's, just indexed)
            ScriptedMind.answers["reply"] = [
                "Run the blob storage C extension under gdb to see where the segfault happens when it maps the blob.",
                "A crashing extension is tiring; debugging the segfault one small step at a time will get you there."]
            third = client.ask("My blob storage C extension segfaults when it maps image.fs.blob; how do I debug it?",
                               depth="direct")
            assert [t["persona"] for t in third["turns"]][:2] == ["BRICK", "ROBIN"], third["turns"]
            this_exchange = f"conversation:{third['conversation']}/0/"
            assert not [s for s in third["turns"][1]["sources"] if s.startswith(this_exchange)]
            assert third["turns"][1]["sources"], "ROBIN recalled nothing: the test shows nothing"
    finally:
        server.stop()


def test_a_method_cycle_gets_related_chunks_in_its_mission_brief(tmp_path, model_server):
    from conftest import ScriptedModel, make_counter, uvm

    notes = tmp_path / "totals.md"
    notes.write_text("# Totals\n\nTo add to a total, read the total slot, add the amount, store it back and "
                     "return the new total.\n")
    make_counter(tmp_path / "image.fs")
    server = uvm(tmp_path / "image.fs", model_server).start()
    try:
        with server.client(timeout=120) as client:
            client.memory_ingest([notes])
            assert client.send("counter_obj", "add_to_total", 5, intent="add an amount to the total") == 15
            cycle = client.call("cycles_list", all=True)[-1]
            brief = client.call("cycle_show", cycle=cycle["id"])["brief"]
        assert [k["source"] for k in brief["knowledge"]] == [str(notes)]
        prompt = ScriptedModel.requests[0]["messages"][-1]["content"]
        assert "From the memory (totals.md)" in prompt and "store it back" in prompt
    finally:
        server.stop()
