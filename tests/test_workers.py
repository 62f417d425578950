"""Workers own their transactions; shutdown drains; replies to vanished peers are logged."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time

import ormsgpack
import transaction

from batos.image import open_image
from batos.kernel.workers import WorkerPool

from conftest import Server, send_raw

SLOW = "def slow(self, n):\n    total = 0\n    for i in range(n):\n        total = total + i\n    self.done = n\n    self._p_changed = True\n    return total\n"


def slow_request(request_id: str) -> dict:
    """About a second and a half of method time here (in a sandbox worker, with no tracer)."""
    return {"id": request_id, "op": "send", "target": "genesis_obj", "selector": "slow", "args": [20_000_000]}


def test_each_worker_has_its_own_connection_and_transaction_manager():
    img = open_image("memory://")
    pool = WorkerPool(img.db, size=4)
    pool.start()
    seen = []
    gate = threading.Barrier(4)

    def probe(root):
        gate.wait(5)  # four jobs in four different workers at the same moment
        jar = root._p_jar
        return (threading.get_ident(), id(jar), id(jar.transaction_manager))

    async def main():
        return await asyncio.gather(*(pool.run(probe, writes=False) for _ in range(4)))

    seen = asyncio.run(main())
    pool.stop()
    img.close()
    threads, jars, managers = zip(*seen)
    assert len(set(threads)) == len(set(jars)) == len(set(managers)) == 4
    assert id(transaction.manager) not in managers


def test_sigterm_lets_in_flight_requests_finish(image_path):
    srv = Server(image_path).start()
    with srv.client() as c:
        c.define("genesis_obj", SLOW)
    sock = send_raw(srv.endpoint, slow_request("slow"))
    try:
        time.sleep(0.2)
        srv.process.send_signal(signal.SIGTERM)
        assert sock.poll(30_000)
        reply = ormsgpack.unpackb(sock.recv())
        assert reply["ok"] is True
    finally:
        sock.close()
    assert srv.process.wait(30) == 0
    srv = Server(image_path, endpoint=srv.endpoint).start()
    with srv.client() as c:
        assert c.get("genesis_obj", "done") == 20_000_000  # acknowledged, so committed
    srv.stop()


def test_reply_to_a_vanished_peer_is_dropped_and_logged(image_path):
    srv = Server(image_path).start()
    with srv.client() as c:
        c.define("genesis_obj", SLOW)
    sock = send_raw(srv.endpoint, slow_request("gone"))
    time.sleep(0.2)
    sock.close()
    deadline = time.monotonic() + 30
    with srv.client() as c:
        while c.stats()["dropped_replies"] == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.stats()["dropped_replies"] == 1
    srv.stop()
    records = [json.loads(line) for line in srv.log_file.read_text().splitlines()]
    assert any("gone" in r["message"] and "dropped" in r["message"] for r in records)
