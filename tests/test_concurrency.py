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


def test_a_writer_that_conflicted_retries_alone_so_few_attempts_suffice(tmp_path):
    """Eight threads, each adding 1 to one shared counter 60 times with only 4 attempts allowed:
    without the retry gate a loser keeps losing to the busy ones and gives up."""
    import transaction
    import ZODB
    import ZODB.FileStorage
    from persistent.mapping import PersistentMapping

    from batos.image.transactions import RetryPolicy, run_in_transaction

    db = ZODB.DB(ZODB.FileStorage.FileStorage(str(tmp_path / "counter.fs")))
    with db.transaction() as conn:
        conn.root()["box"] = PersistentMapping(n=0)
    policy = RetryPolicy(max_attempts=4)
    conflicts: list[int] = []
    errors: list[BaseException] = []

    def add(root) -> None:
        root["box"]["n"] += 1

    def writer() -> None:
        manager = transaction.TransactionManager(explicit=True)
        conn = db.open(transaction_manager=manager)
        try:
            for _ in range(60):
                run_in_transaction(manager, lambda: add(conn.root()), policy, on_conflict=lambda: conflicts.append(1))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert not errors
        assert conflicts, "the threads never contended: the test shows nothing"
        with db.transaction() as conn:
            assert conn.root()["box"]["n"] == 8 * 60
    finally:
        db.close()
