"""doctor, backup/restore and pack on real image files."""

from __future__ import annotations

import json

from ZODB.Connection import TransactionMetaData

from batos.image import UvmObject, open_image
from batos.image.upkeep import doctor

from conftest import Session, opened_root, run_cli


def write_counter(path, value):
    with opened_root(path) as root:
        root["genesis_obj"].counter = value


def read_counter(path):
    with opened_root(path) as root:
        return root["genesis_obj"]._slots.get("counter")


def test_doctor_finds_a_fresh_image_clean(image_path):
    write_counter(image_path, 1)
    done = run_cli("doctor", "--image", str(image_path), "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["clean"] and report["objects"] > 10


def test_doctor_reports_a_damaged_file(image_path):
    write_counter(image_path, 1)
    data = bytearray(image_path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = b"\xff" * 16
    image_path.write_bytes(bytes(data))
    done = run_cli("doctor", "--image", str(image_path))
    assert done.returncode == 1 and "PROBLEM" in done.stdout


def test_doctor_reports_a_dangling_reference(image_path):
    write_counter(image_path, 1)
    img = open_image(str(image_path))
    session = Session(img.db)
    with session as root:
        root["genesis_obj"].friend = UvmObject(name="friend")
    with session as root:
        friend = root["genesis_obj"]._slots["friend"]
        oid, serial = friend._p_oid, friend._p_serial
    session.close()
    # remove the friend's record behind the image's back (IExternalGC), leaving the reference
    storage = img.db.storage
    txn = TransactionMetaData()
    storage.tpc_begin(txn)
    storage.deleteObject(oid, serial, txn)
    storage.tpc_vote(txn)
    storage.tpc_finish(txn)
    img.close()
    report = doctor(str(image_path))
    assert not report.clean
    assert any(hex(int.from_bytes(oid, "big")) in p and "missing" in p for p in report.problems)


def test_backup_and_restore_round_trip(image_path, tmp_path):
    write_counter(image_path, 7)
    repository = tmp_path / "backups"
    assert run_cli("backup", str(repository), "--image", str(image_path)).returncode == 0
    write_counter(image_path, 8)
    assert run_cli("backup", str(repository), "--image", str(image_path)).returncode == 0  # incremental
    restored = tmp_path / "restored.fs"
    done = run_cli("restore", str(repository), "--image", str(restored))
    assert done.returncode == 0, done.stderr
    assert read_counter(restored) == 8
    again = run_cli("restore", str(repository), "--image", str(restored))
    assert again.returncode == 4 and "--force" in again.stderr


def test_backup_while_served(server, tmp_path):
    with server.client() as c:
        c.set("genesis_obj", "counter", 3)
    repository = tmp_path / "live-backups"
    assert run_cli("backup", str(repository), "--image", str(server.image)).returncode == 0
    restored = tmp_path / "copy.fs"
    assert run_cli("restore", str(repository), "--image", str(restored)).returncode == 0
    assert read_counter(restored) == 3


def test_pack_through_the_server_and_offline(server, tmp_path):
    with server.client() as c:
        for i in range(50):
            c.set("genesis_obj", "counter", i)
        size = c.stats()["size_bytes"]
    done = run_cli("pack", "--endpoint", server.endpoint)
    assert done.returncode == 0
    assert json.loads(done.stdout)["size"] < size
    with server.client() as c:
        assert c.get("genesis_obj", "counter") == 49
    server.stop()
    offline = run_cli("pack", "--image", str(server.image))
    assert offline.returncode == 0, offline.stderr
    assert read_counter(server.image) == 49


def test_pack_offline_refuses_a_served_image(server):
    done = run_cli("pack", "--image", str(server.image))
    assert done.returncode == 3 and str(server.process.pid) in done.stderr
