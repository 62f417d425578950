"""Bad input found by the second review: each gets a clear error code, changes nothing, and the
server keeps answering."""

from __future__ import annotations

import time

import ormsgpack
import pytest
import zmq

from batos.client import RemoteError
from batos.memory.chunking import blocks, chunk_text

from conftest import Server, run_cli


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("bad-input") / "image.fs").start()
    yield server
    server.stop()


def raw_reply(endpoint: str, payload: bytes) -> dict:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(endpoint)
    try:
        sock.send(payload)
        return ormsgpack.unpackb(sock.recv())
    finally:
        sock.close()


def nested_field(fields: dict, name: str, depth: int) -> bytes:
    """``fields`` plus ``name`` holding a list nested ``depth`` levels (more than the encoder here
    would write)."""
    head = ormsgpack.packb(fields)
    assert 0x80 <= head[0] < 0x8f
    return bytes([head[0] + 1]) + head[1:] + ormsgpack.packb(name) + b"\x91" * depth + b"\xc0"


def assert_unchanged_and_alive(srv: Server, before: str) -> None:
    started = time.monotonic()
    with srv.client(timeout=5) as c:
        assert c.ping()["pong"] and time.monotonic() - started < 2.0
        assert c.stats()["last_transaction"] == before


@pytest.mark.parametrize("depth", [300, 500, 700, 950, 5000])
@pytest.mark.parametrize("op, field", [("set", "value"), ("send", "args"), ("send_missing", "args")])
def test_deep_nesting_is_too_large_not_internal(srv, depth, op, field):
    with srv.client() as c:
        before = c.stats()["last_transaction"]
    fields = {"id": "deep", "op": "send" if op.startswith("send") else op, "target": "genesis_obj"}
    fields.update({"set": {"slot": "deep"}, "send": {"selector": "clone"}, "send_missing": {"selector": "nothing_here"}}[op])
    reply = raw_reply(srv.endpoint, nested_field(fields, field, depth))
    assert reply["ok"] is False and reply["error"]["code"] == "too_large", reply
    assert_unchanged_and_alive(srv, before)


@pytest.mark.parametrize("days", [float("nan"), float("inf"), 1e308, -1, -0.5])
def test_pack_refuses_days_that_are_not_a_sane_number(srv, days):
    with srv.client() as c:
        before = c.stats()["last_transaction"]
        for op in ("pack", "cycles_prune", "conversations_prune"):
            with pytest.raises(RemoteError) as caught:
                c.call(op, days=days)
            assert caught.value.code == "bad_request", (op, caught.value.message)
    assert_unchanged_and_alive(srv, before)


def test_bytes_after_the_map_are_refused(srv):
    reply = raw_reply(srv.endpoint, ormsgpack.packb({"id": "t", "op": "ping"}) + b"\x00")
    assert reply["error"]["code"] == "bad_request" and "after its msgpack map" in reply["error"]["message"]
    assert raw_reply(srv.endpoint, ormsgpack.packb({"id": "t", "op": "ping"}))["ok"] is True


@pytest.mark.parametrize("upload_id", ["abc\n", "abc\r\n", "../x", ""])
def test_an_upload_id_is_exactly_its_characters(srv, upload_id):
    with srv.client() as c:
        with pytest.raises(RemoteError) as caught:
            c.call("upload", upload_id=upload_id, offset=0, data=b"x")
        assert caught.value.code == "bad_request"


def test_an_oid_with_a_newline_names_nothing(srv):
    with srv.client() as c:
        oid = c.describe("genesis_obj")["oid"]
        with pytest.raises(RemoteError) as caught:
            c.describe(oid + "\n")
        assert caught.value.code == "not_found"


def test_batos_send_prints_a_bytes_result(srv):
    with srv.client() as c:
        c.define("genesis_obj", "def raw_bytes(self):\n    return bytes([104, 105, 0, 255])\n")
    done = run_cli("send", "--endpoint", srv.endpoint, "genesis_obj", "raw_bytes")
    assert done.returncode == 0, done.stderr
    assert '"$bytes": "aGkA/w=="' in done.stdout
    done = run_cli("send", "--endpoint", srv.endpoint, "--json", "genesis_obj", "raw_bytes")
    assert done.returncode == 0 and "aGkA/w==" in done.stdout


@pytest.mark.parametrize("line", [
    "# " + " " * 100_000 + "x",
    "#" * 6 + " " * 100_000 + "#" * 3 + " " * 50 + "!",
    "## title" + " " * 100_000 + "#" * 100 + " " * 100_000,
])
def test_a_pathological_heading_line_is_chunked_in_linear_time(line):
    started = time.monotonic()
    found = blocks(line + "\n\nSome prose after it.\n")
    chunk_text(line)
    assert time.monotonic() - started < 1.0
    assert found[0].kind == "heading"


def test_a_payload_of_millions_of_empty_maps_is_refused_before_it_is_decoded(srv):
    """The hostile review's finding: 16 MiB of empty maps held the event loop ~5 s per copy."""
    import struct

    count = 16 * 1024**2 - 64
    bomb = b"\x83\xa2id\xa1b\xa2op\xa4ping\xa5extra\xdd" + struct.pack(">I", count) + b"\x80" * count
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 30_000)
    sock.connect(srv.endpoint)
    try:
        for _ in range(3):
            sock.send(bomb)
        started = time.monotonic()
        with srv.client(timeout=5) as c:
            assert c.ping()["pong"] and time.monotonic() - started < 2.0
        replies = [ormsgpack.unpackb(sock.recv()) for _ in range(3)]
    finally:
        sock.close()
    assert [r["error"]["code"] for r in replies] == ["too_large"] * 3 and replies[0]["id"] is None
