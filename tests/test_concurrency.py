"""Many clients writing one object: conflicts are retried inside the server, none is lost."""

from __future__ import annotations

import threading

import pytest

from batos.client import Client

from conftest import Server
from test_server import INCREMENT

CLIENTS = 8
EACH = 200


@pytest.mark.slow
def test_eight_clients_two_hundred_increments_each(image_path):
    srv = Server(image_path).start()
    try:
        with srv.client() as c:
            c.set("genesis_obj", "counter", 0)
            c.define("genesis_obj", INCREMENT)
        results: list[list[int]] = [[] for _ in range(CLIENTS)]
        errors: list[BaseException] = []

        def hammer(slot: int) -> None:
            try:
                with Client(srv.endpoint, timeout=60) as c:
                    for _ in range(EACH):
                        results[slot].append(c.send("genesis_obj", "increment"))
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors
        with srv.client() as c:
            assert c.get("genesis_obj", "counter") == CLIENTS * EACH
            stats = c.stats()
        # every acknowledged value is distinct: no two increments read the same counter
        seen = sorted(v for r in results for v in r)
        assert seen == list(range(1, CLIENTS * EACH + 1))
        assert stats["messages"]["send"] == CLIENTS * EACH
    finally:
        assert srv.stop() == 0
