"""What one client can make the image grow by (the second review's finding 7)."""

from __future__ import annotations

import os

import pytest

from batos.client import RemoteError

from conftest import Server


def image_bytes(srv: Server) -> int:
    return os.path.getsize(srv.image)


@pytest.fixture
def srv(tmp_path):
    server = Server(tmp_path / "image.fs").start()
    yield server
    server.stop()


def test_fifteen_hundred_sets_with_long_slot_names_grow_the_image_linearly(srv):
    """Each set used to rewrite the object's whole slot mapping: 296 MB for this payload."""
    with srv.client() as c:
        target = c.send("genesis_obj", "clone")["$oid"]
        before = image_bytes(srv)
        for i in range(1500):
            c.set(target, f"{i:05d}" + "n" * 245, "x")
        grown = image_bytes(srv) - before
        assert len(c.describe(target)["slots"]) >= 1500
    assert grown < 20 * 1024**2, f"the image grew by {grown / 1024**2:.1f} MB"


def test_a_method_that_clones_a_megabyte_forty_times_is_refused_and_writes_nothing(srv):
    with srv.client() as c:
        target = c.send("genesis_obj", "clone")["$oid"]
        c.set(target, "big", "x" * 1_000_000)
        c.define(target, "def flood(self):\n    made = [self.clone() for i in range(40)]\n"
                         "    self.made = made\n    self._p_changed = True\n    return len(made)\n")
        before, last = image_bytes(srv), c.stats()["last_transaction"]
        with pytest.raises(RemoteError) as caught:
            c.send(target, "flood")
        assert caught.value.code == "too_large"
        assert c.stats()["last_transaction"] == last
        assert "made" not in c.describe(target)["slots"]
    assert image_bytes(srv) == before

