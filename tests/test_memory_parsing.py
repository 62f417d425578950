"""Untrusted documents are parsed out of the UVM's process, in a confined child with a time and
memory budget, in linear time (the second review's finding 5)."""

from __future__ import annotations

import time

import pytest

from batos.errors import BadRequest
from batos.memory.parsing import parse

from conftest import PingWatch, Server

HEADING_LINE = "# " + " " * 100_000 + "x\n\nSome text under it.\n"
COMMENT_OPENERS = "<!--" * 100_000  # 400 KB: html.parser rescans it for every chunk it is fed
BIG_SCRIPT = "<html><body><script>" + "var x = 1; // filler\n" * 500_000 + "</script><p>Visible text at the end.</p></body></html>"


def test_a_document_that_parses_too_long_is_refused_in_its_budget():
    parse("warm.md", b"# x\n\ntext\n", 1024, 200, 40)  # the worker has started
    started = time.monotonic()
    with pytest.raises(BadRequest, match="longer than 3 s"):
        parse("comments.html", COMMENT_OPENERS.encode(), 20 * 1024**2, 200, 40, seconds=3)
    assert time.monotonic() - started < 5
    assert parse("after.md", b"# y\n\nstill parsing\n", 1024, 200, 40).chunks  # a fresh worker took its place


@pytest.mark.parametrize("name, text", [("heading.md", HEADING_LINE), ("script.html", BIG_SCRIPT),
                                        ("one-line.txt", "word " * 2_000_000)])
def test_pathological_documents_parse_in_linear_time(name, text):
    started = time.monotonic()
    parsed = parse(name, text.encode(), 20 * 1024**2, 200, 40, seconds=30)
    assert time.monotonic() - started < 10 and parsed.chunks


def test_what_a_parser_answers_is_checked_before_it_is_used():
    from batos.memory.parsing import _checked_chunks, _checked_kind

    assert _checked_chunks([["text", "A > B", 3, "prose"]])[0].section == "A > B"
    for chunks in ([["text", "section", "0", "prose"]], [["t", "s", 0, "shellcode"]], [["t", "s", True, "code"]],
                   [["t", "s", 0]], "not a list", [{"text": "t"}]):
        with pytest.raises(BadRequest, match="malformed"):
            _checked_chunks(chunks)
    with pytest.raises(BadRequest, match="unknown kind"):
        _checked_kind("exe")


def test_documents_are_parsed_by_a_confined_worker_a_fresh_child_each():
    from batos.memory import parsing

    parse("warm.md", b"# x\n\ntext\n", 1024, 200, 40)
    confinement = parsing._default.pool.confinement
    assert {"landlock", "seccomp", "no_new_privs"} <= set(confinement["applied"])
    assert confinement["status"]["Seccomp"] == "2" and int(confinement["status"]["CapEff"], 16) == 0


@pytest.mark.slow
def test_ingesting_hostile_documents_never_slows_ping(tmp_path):
    files = {"heading.md": HEADING_LINE, "comments.html": COMMENT_OPENERS, "script.html": BIG_SCRIPT}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    srv = Server(tmp_path / "image.fs", env={"BATOS_MEMORY_PARSE_SECONDS": "8"}).start()
    try:
        with PingWatch(srv) as watch, srv.client(timeout=300) as c:
            results = {r["source"].rsplit("/", 1)[-1]: r for r in c.memory_ingest([tmp_path / n for n in files])}
    finally:
        srv.stop()
    latencies = watch.latencies
    assert results["heading.md"]["status"] == "added" and results["script.html"]["status"] == "added"
    assert results["comments.html"]["status"] in ("added", "refused")
    assert len(latencies) > 20 and max(latencies) < 2.0, max(latencies)
