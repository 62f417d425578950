"""kill -9 at random moments: nothing acknowledged is lost, and restart needs no hand."""

from __future__ import annotations

import random
import threading

import pytest

from batos.client import BridgeTimeout, Client

from conftest import Server, run_cli
from test_server import INCREMENT

KILLS = 12


def increment_until_dead(endpoint: str, acked: list[int], stop: threading.Event) -> None:
    with Client(endpoint, timeout=1.0) as c:
        while not stop.is_set():
            try:
                acked.append(c.send("genesis_obj", "increment"))
            except BridgeTimeout:
                return


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_increment(image_path):
    rng = random.Random(20261124)
    srv = Server(image_path).start()
    with srv.client() as c:
        c.set("genesis_obj", "counter", 0)
        c.define("genesis_obj", INCREMENT)
    last_acked = 0
    for kill in range(KILLS):
        acked: list[int] = []
        stop = threading.Event()
        worker = threading.Thread(target=increment_until_dead, args=(srv.endpoint, acked, stop))
        worker.start()
        threading.Event().wait(rng.uniform(0.05, 0.8))
        srv.kill()
        stop.set()
        worker.join(10)
        if acked:
            assert acked == list(range(acked[0], acked[0] + len(acked)))  # one client, strictly +1
            last_acked = acked[-1]

        doctor = run_cli("doctor", "--image", str(image_path))
        assert doctor.returncode == 0, f"after kill {kill}: {doctor.stdout}{doctor.stderr}"

        srv = Server(image_path, endpoint=srv.endpoint).start()  # no manual step: stale lock is fine
        with srv.client() as c:
            counter = c.get("genesis_obj", "counter")
        # every acknowledged increment is there; at most the one in flight at the kill was added
        assert last_acked <= counter <= last_acked + 1, (kill, last_acked, counter)
        last_acked = counter
    assert last_acked > 0
    doctor = run_cli("doctor", "--image", str(image_path))
    assert doctor.returncode == 0 and "locked by live process" in doctor.stdout
    assert srv.stop() == 0
