"""The UVM as a user meets it: a real `batos run` process, a real socket, the CLI and the client."""

from __future__ import annotations

import json
import signal

import pytest

from batos.client import AsyncClient, BridgeTimeout, Client, RemoteError

from conftest import Server, run_cli

INCREMENT = "def increment(self):\n    self.counter = self.counter + 1\n    self._p_changed = True\n    return self.counter\n"


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server for the tests that only read or are refused (they leave the image as it was)."""
    srv = Server(tmp_path_factory.mktemp("shared") / "image.fs").start()
    yield srv
    srv.stop()


def test_ops_round_trip(server):
    with server.client() as c:
        assert c.ping()["pong"] is True
        described = c.describe("genesis_obj")
        assert described["name"] == "genesis" and described["oid"].startswith("0x")
        assert "clone" in described["methods"]
        assert c.set("genesis_obj", "counter", 0) == 0
        assert c.define("genesis_obj", INCREMENT)["version"] == 1
        assert c.send("genesis_obj", "increment") == 1
        assert c.get("genesis_obj", "counter") == 1
        # an object addressed by its oid is the same object
        assert c.send(described["oid"], "increment") == 2


def test_clone_returns_a_usable_new_object(server):
    with server.client() as c:
        made = c.send("genesis_obj", "clone")
        c.set(made["$oid"], "colour", "red")
        assert c.get(made["$oid"], "colour") == "red"
        assert c.get(made["$oid"], "name") == "genesis"  # own copy of the prototype's slots
        c.set("genesis_obj", "child", made)  # a reference sent back in is the object itself
        assert c.send("genesis_obj", "child")["$oid"] == made["$oid"]


def test_methods_receive_args_and_kwargs(server):
    with server.client() as c:
        c.define("genesis_obj", "def scale(self, x, by=2):\n    return [x * by, {'by': by}]\n")
        assert c.send("genesis_obj", "scale", 3) == [6, {"by": 2}]
        assert c.send("genesis_obj", "scale", 3, by=10) == [30, {"by": 10}]


@pytest.mark.parametrize("call, code", [
    (lambda c: c.describe("no_such_obj"), "not_found"),
    (lambda c: c.describe("0xffffff"), "not_found"),
    (lambda c: c.get("genesis_obj", "no_such_slot"), "not_found"),
    (lambda c: c.send("genesis_obj", "no_such_selector"), "not_understood"),
    (lambda c: c.set("genesis_obj", "_slots", 1), "bad_request"),
    (lambda c: c.define("genesis_obj", "def broken(self):\n    return (\n"), "invalid_source"),
    (lambda c: c.define("genesis_obj", "import os"), "invalid_source"),
    (lambda c: c.define("genesis_obj", "def peek(self):\n    return self.__class__\n"), "guardian_rejected"),
    (lambda c: c.define("genesis_obj", "def grow(self):\n    self.size = 2\n    return 1\n"), "guardian_rejected"),
    (lambda c: c.call("define", target="genesis_obj", source="def a(self):\n    return 1\n", selector="b"), "invalid_source"),
    (lambda c: c.call("frobnicate"), "unknown_op"),
    (lambda c: c.call("get", target="genesis_obj"), "bad_request"),
    (lambda c: c.call("get", target=5, slot="x"), "bad_request"),
    (lambda c: c.call("send", target="genesis_obj", selector="describe", args="notalist"), "bad_request"),
])
def test_bad_requests_get_clear_codes_and_write_nothing(shared_server, call, code):
    with shared_server.client() as c:
        before = c.stats()["last_transaction"]
        with pytest.raises(RemoteError) as caught:
            call(c)
        assert caught.value.code == code
        assert caught.value.message
        assert c.stats()["last_transaction"] == before


def test_method_errors_are_reported_and_roll_back(server):
    with server.client() as c:
        c.set("genesis_obj", "counter", 5)
        c.define("genesis_obj", "def half_done(self):\n    self.counter = 100\n    self._p_changed = True\n    return 1 / 0\n")
        with pytest.raises(RemoteError) as caught:
            c.send("genesis_obj", "half_done")
        assert caught.value.code == "method_error"
        assert "ZeroDivisionError" in caught.value.message and "line 4" in caught.value.message
        assert c.get("genesis_obj", "counter") == 5


def test_read_only_send_does_not_commit(shared_server):
    with shared_server.client() as c:
        c.define("genesis_obj", "def peek(self):\n    return self.name\n")
        before = c.stats()["last_transaction"]
        for _ in range(5):
            assert c.send("genesis_obj", "peek") == "genesis"
            c.describe("genesis_obj")
            c.get("genesis_obj", "name")
        assert c.stats()["last_transaction"] == before


def test_runaway_method_is_stopped_by_its_budget(image_path):
    srv = Server(image_path, extra_args=("--method-budget", "1")).start()
    try:
        with srv.client() as c:
            c.set("genesis_obj", "counter", 0)
            c.define("genesis_obj", "def spin(self):\n    self.counter = 99\n    while True:\n        try:\n            pass\n        except Exception:\n            pass\n    self._p_changed = True\n")
            with pytest.raises(RemoteError) as caught:
                c.send("genesis_obj", "spin")
            assert caught.value.code == "timeout"
            assert c.get("genesis_obj", "counter") == 0
            assert c.ping()["pong"]
    finally:
        assert srv.stop() == 0


def test_restart_keeps_committed_writes(image_path):
    srv = Server(image_path).start()
    with srv.client() as c:
        c.set("genesis_obj", "counter", 0)
        c.define("genesis_obj", INCREMENT)
        assert c.send("genesis_obj", "increment") == 1
    assert srv.stop(signal.SIGTERM) == 0
    srv = Server(image_path, endpoint=srv.endpoint).start()
    with srv.client() as c:
        assert c.send("genesis_obj", "increment") == 2
    assert srv.stop(signal.SIGINT) == 0


def test_second_server_on_the_same_image_fails_fast_naming_the_pid(server):
    other = Server(server.image).start(wait=False)
    code = other.process.wait(30)
    stderr = other.process.stderr.read()
    assert code == 3
    assert str(server.process.pid) in stderr
    with server.client() as c:
        assert c.ping()["pong"]


def test_busy_endpoint_is_a_clear_start_failure(server, tmp_path):
    other = Server(tmp_path / "other.fs", endpoint=server.endpoint).start(wait=False)
    assert other.process.wait(30) != 0
    assert "cannot bind" in other.process.stderr.read()


def test_public_endpoint_without_curve_is_refused(tmp_path):
    srv = Server(tmp_path / "img.fs", endpoint="tcp://0.0.0.0:0").start(wait=False)
    assert srv.process.wait(30) == 1
    assert "CURVE" in srv.process.stderr.read()


def test_log_file_has_one_record_per_message(server):
    with server.client() as c:
        c.ping()
        c.send("genesis_obj", "describe")
        with pytest.raises(RemoteError):
            c.send("genesis_obj", "nope")
    server.stop()
    records = [json.loads(line) for line in server.log_file.read_text().splitlines()]
    messages = [r for r in records if r["logger"] == "batos.messages"]
    sends = [m for m in messages if m["op"] == "send"]
    assert [(m["selector"], m["outcome"]) for m in sends] == [("describe", "ok"), ("nope", "not_understood")]
    assert all({"id", "op", "target", "duration_ms", "outcome"} <= set(m) for m in messages)


def test_async_client(shared_server):
    server = shared_server
    import asyncio

    async def main():
        async with AsyncClient(server.endpoint, timeout=10) as c:
            await c.set("genesis_obj", "n", 1)
            results = await asyncio.gather(c.get("genesis_obj", "n"), c.ping(), c.describe("traits_obj"))
            with pytest.raises(RemoteError):
                await c.get("genesis_obj", "missing")
            return results

    n, pong, traits = asyncio.run(main())
    assert n == 1 and pong["pong"] and traits["name"] == "traits"


def test_client_timeout_when_nobody_listens():
    with Client("tcp://127.0.0.1:1", timeout=0.3) as c:
        with pytest.raises(BridgeTimeout, match="no reply"):
            c.ping()


def test_cli_walkthrough_from_the_readme(server):
    e = ("--endpoint", server.endpoint)
    described = run_cli("send", "genesis_obj", "describe", *e)
    assert described.returncode == 0 and '"genesis"' in described.stdout
    assert run_cli("set", "genesis_obj", "counter", "0", *e).returncode == 0
    defined = run_cli("define", "genesis_obj", "increment",
                      r"def increment(self):\n    self.counter = self.counter + 1\n    self._p_changed = True\n    return self.counter", *e)
    assert defined.returncode == 0, defined.stderr
    assert run_cli("send", "genesis_obj", "increment", *e).stdout.strip() == "1"
    reply = json.loads(run_cli("send", "--json", "genesis_obj", "increment", *e).stdout)
    assert reply["ok"] is True and reply["result"] == 2
    missing = run_cli("send", "genesis_obj", "nope", *e)
    assert missing.returncode == 1 and "not_understood" in missing.stderr
    as_json = run_cli("get", "--json", "genesis_obj", "nope", *e)
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["error"]["code"] == "not_found"
    # ARGs are JSON literals when they parse, strings otherwise
    run_cli("define", "genesis_obj", "echo", r"def echo(self, *a):\n    return list(a)", *e)
    echoed = run_cli("send", "genesis_obj", "echo", "1", "2.5", "true", "null", "[1]", "hello", "{bad", *e)
    assert json.loads(echoed.stdout) == [1, 2.5, True, None, [1], "hello", "{bad"]


def test_cli_shell_runs_commands_and_survives_errors(server, tmp_path):
    import os
    import subprocess
    import sys

    history = tmp_path / "history"
    script = "set genesis_obj mood happy\ngenesis_obj mood\nget genesis_obj nothing\nbogus\nquit\n"
    done = subprocess.run([sys.executable, "-m", "batos", "shell", "--endpoint", server.endpoint],
                          input=script, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "BATOS_HISTORY": str(history)})
    assert done.returncode == 0
    assert done.stdout.count("happy") == 2
    assert "error: not_found" in done.stdout  # a failed command reports and the shell goes on
    assert "usage:" in done.stderr  # 'bogus' is a send without a selector


def test_curve_encrypted_bridge(tmp_path):
    import zmq

    public, secret = zmq.curve_keypair()
    srv = Server(tmp_path / "img.fs", env={"BATOS_CURVE_SECRET_KEY": secret.decode()}).start(wait=False)
    try:
        with Client(srv.endpoint, timeout=20, server_key=public.decode()) as c:
            assert c.ping()["pong"]
        with Client(srv.endpoint, timeout=1) as plain:  # no key: the handshake never completes
            with pytest.raises(BridgeTimeout):
                plain.ping()
    finally:
        assert srv.stop() == 0


def test_a_uvm_stopped_at_once_after_start_exits_cleanly(image_path):
    """Stopped while the embedder still loads in the background: the process ends with 0, not an
    abort from a thread the interpreter tore down under it (a person's Ctrl-C right after start)."""
    srv = Server(image_path)
    for _ in range(3):
        srv.start()
        assert srv.stop() == 0, srv.process.stderr.read()[-2000:]
