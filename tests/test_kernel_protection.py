"""Kernel objects and limits that need a cycle or an upload: through a real UVM with a scripted
(test-only) OpenAI-compatible model, and through the doctor on an image the test damages."""

from __future__ import annotations

import json
import os
import zipfile

import pytest

from batos.client import RemoteError
from batos.image.blobs import adapter_record, blob_from_file

from conftest import ADD, EXAMPLE, ScriptedModel, Server, make_counter, opened_root, run_cli, uvm


def test_a_cycle_awaiting_approval_cannot_be_edited_and_approval_names_what_was_shown(image_path, model_server):
    make_counter(image_path)
    srv = uvm(image_path, model_server, BATOS_APPROVAL="manual").start()
    e = ("--endpoint", srv.endpoint)
    try:
        with srv.client(timeout=60) as c:
            cycle = c.send("counter_obj", "add_to_total", 5, examples=[EXAMPLE], wait=False)["cycle"]
            with pytest.raises(RemoteError):
                c.send("counter_obj", "add_to_total", 5)  # waits for the cycle: awaiting approval
            shown = c.call("cycle_show", cycle=cycle)
            assert shown["state"] == "AWAITING_APPROVAL" and shown["approved_source"] == ADD
            before = c.stats()["last_transaction"]
            for slot, value in (("approved_source", "def add_to_total(self, n):\n    return 0\n"),
                                ("target", {"$oid": c.describe("genesis_obj")["oid"]}),
                                ("synthesis_state*", 5)):
                with pytest.raises(RemoteError) as caught:
                    c.set(shown["oid"], slot, value)
                assert caught.value.code == "protected"
            with pytest.raises(RemoteError) as caught:
                c.define(shown["oid"], "def approved_source(self):\n    return 1\n")
            assert caught.value.code == "protected"
            assert c.stats()["last_transaction"] == before
            with pytest.raises(RemoteError) as caught:
                c.call("cycle_decide", cycle=cycle, approve=True, digest="0" * 64)
            assert caught.value.code == "conflict"
        approved = run_cli("cycles", "approve", cycle, *e)
        assert json.loads(approved.stdout)["state"] == "COMPLETE" and shown["approved_digest"] in approved.stderr
        with srv.client() as c:
            assert c.send("counter_obj", "add_to_total", 1) == 11
    finally:
        srv.stop()
    report = json.loads(run_cli("doctor", "--image", str(image_path), "--json").stdout)
    assert report["problems"] == []


def test_cycle_starts_are_limited_per_client(image_path, model_server):
    ScriptedModel.delay = 0.2
    make_counter(image_path)
    srv = uvm(image_path, model_server, BATOS_MAX_CYCLES_PER_MINUTE="3").start()
    try:
        with srv.client() as c:
            started = [c.send("counter_obj", f"missing_{i}", wait=False)["cycle"] for i in range(3)]
            assert len(set(started)) == 3
            assert c.send("counter_obj", "missing_0", wait=False)["cycle"] == started[0]  # joining starts nothing
            with pytest.raises(RemoteError) as caught:
                c.send("counter_obj", "missing_3", wait=False)
            assert caught.value.code == "rate_limited" and "minute" in caught.value.message
        with srv.client() as other:  # another client has its own allowance
            assert other.send("counter_obj", "missing_4", wait=False)["cycle"]
    finally:
        srv.stop()


def test_a_huge_model_answer_is_stored_once_and_bounded(image_path, model_server):
    filler = "# " + "x" * 1000 + "\n"
    ScriptedModel.answers = [ADD + filler * 2000]  # ~2 MB, every attempt
    make_counter(image_path)
    size_before = os.path.getsize(image_path)
    srv = uvm(image_path, model_server).start()
    try:
        with srv.client(timeout=60) as c:
            assert c.send("counter_obj", "add_to_total", 5, examples=[EXAMPLE]) == 15
    finally:
        srv.stop()
    assert os.path.getsize(image_path) - size_before < 512 * 1024


def test_a_small_archive_that_unpacks_huge_is_refused_and_leaves_nothing(image_path):
    bomb = image_path.parent / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("adapter/adapter_config.json", json.dumps({"peft_type": "LORA"}))
        z.writestr("adapter/adapter_model.safetensors", b"\0" * (150 * 1024 * 1024))
    assert bomb.stat().st_size < 1024 * 1024
    srv = Server(image_path).start()
    try:
        with srv.client(timeout=60) as c:
            before = c.stats()["last_transaction"]
            upload = c.upload(bomb)
            with pytest.raises(RemoteError) as caught:
                c.call("expert_import", upload_id=upload)
            assert caught.value.code == "import_failed" and "bytes" in caught.value.message
            assert c.stats()["last_transaction"] == before
    finally:
        srv.stop()
    scratch = image_path.parent / f"{image_path.name}.scratch"
    assert not scratch.exists() or list(scratch.iterdir()) == []


# --- the doctor finds what attacks planted ---------------------------------------------------------

def adapter_image(image_path, tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (folder / "adapter_model.safetensors").write_bytes(b"w" * 4096)
    with opened_root(image_path) as root:
        root["pLLM_obj"]._slots["lora_repository"]["expert"] = adapter_record(folder, "expert")
    with opened_root(image_path) as root:
        return root["pLLM_obj"]._slots["lora_repository"]["expert"]._slots["model_blob"].committed()


def doctor_problems(image_path) -> list[str]:
    done = run_cli("doctor", "--image", str(image_path), "--json")
    return json.loads(done.stdout)["problems"]


def test_doctor_finds_a_blob_file_replaced_by_a_link(image_path, tmp_path):
    blob_file = adapter_image(image_path, tmp_path)
    assert doctor_problems(image_path) == []
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"w" * 4096)
    os.chmod(blob_file, 0o644)
    os.remove(blob_file)
    os.symlink(elsewhere, blob_file)
    assert any("not a regular file" in p for p in doctor_problems(image_path))


def test_doctor_finds_an_experts_gguf_form_replaced_by_a_link(image_path, tmp_path):
    adapter_image(image_path, tmp_path)
    converted = tmp_path / "adapter.gguf"
    converted.write_bytes(b"GGUF" + b"\0" * 64)
    with opened_root(image_path) as root:
        record = root["pLLM_obj"]._slots["lora_repository"]["expert"]
        record._slots["gguf_blob"] = blob_from_file(converted, keep_source=False)
    with opened_root(image_path) as root:
        blob_file = root["pLLM_obj"]._slots["lora_repository"]["expert"]._slots["gguf_blob"].committed()
    assert doctor_problems(image_path) == []
    os.chmod(blob_file, 0o644)
    os.remove(blob_file)
    (tmp_path / "elsewhere.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    os.symlink(tmp_path / "elsewhere.gguf", blob_file)
    problems = doctor_problems(image_path)
    assert any("not a regular file" in p for p in problems), problems


def test_doctor_finds_blob_bytes_that_no_longer_match(image_path, tmp_path):
    blob_file = adapter_image(image_path, tmp_path)
    os.chmod(blob_file, 0o644)
    with open(blob_file, "r+b") as f:
        f.write(b"evil")
    assert any("differ from the digest" in p for p in doctor_problems(image_path))


@pytest.mark.parametrize("damage, expected", [
    (lambda root: root["genesis_obj"]._slots.__setitem__("parent*", 7), "not a list of objects"),
    (lambda root: root["traits_obj"]._slots.__delitem__("describe"), "missing its primitive 'describe'"),
    (lambda root: root["pLLM_obj"]._slots.__setitem__("model_bundles", {}), "not the kernel's table"),
])
def test_doctor_finds_damaged_kernel_objects(image_path, damage, expected):
    with opened_root(image_path) as root:
        damage(root)
    assert any(expected in p for p in doctor_problems(image_path))


def test_doctor_finds_a_cycle_in_a_state_that_does_not_exist(image_path):
    from batos.image import UvmObject

    with opened_root(image_path) as root:
        root["active_cycles"]["bad"] = UvmObject(cycle_id="bad", **{"synthesis_state*": 5})
    assert any("cycle bad is in a state that does not exist" in p for p in doctor_problems(image_path))


def test_a_stored_value_that_shares_its_halves_cannot_pin_the_server(image_path):
    """Finding 5: such a value, stored before the limits existed, survives restarts; showing it
    must be refused at once, not walked 2**40 times."""
    value: list = [1]
    for _ in range(40):
        value = [value, value]
    with opened_root(image_path) as root:
        root["genesis_obj"]._slots["dag"] = value
    srv = Server(image_path).start()
    try:
        with srv.client(timeout=20) as c:
            for call in (lambda: c.get("genesis_obj", "dag"), lambda: c.describe("genesis_obj"),
                         lambda: c.send("genesis_obj", "dag")):
                with pytest.raises(RemoteError) as caught:
                    call()
                assert caught.value.code == "too_large"
            c.define("genesis_obj", "def peek(self):\n    return len(self.slot_names())\n")
            assert c.send("genesis_obj", "peek") >= 1  # the snapshot leaves out what it cannot send
            assert c.ping()["pong"]
    finally:
        srv.stop()


# --- kernel data by reachability; primitives' names; what the doctor sees -------------------------

def tiny_adapter(folder):
    """A peft LoRA adapter folder as small as an import takes."""
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 1}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights" * 100)
    return folder


def test_expert_records_are_kernel_objects_for_clients_and_methods(image_path, tmp_path):
    with opened_root(image_path) as root:
        root["pLLM_obj"]._slots["lora_repository"]["mallory"] = adapter_record(tiny_adapter(tmp_path / "mallory"), "mallory")
        root["holder"] = root["genesis_obj"].clone()
        root["holder"]._slots["llm"] = root["pLLM_obj"]
    srv = Server(image_path).start()
    try:
        with srv.client() as c:
            record = c.get("pLLM_obj", "lora_repository")["mallory"]["$oid"]
            before = c.stats()["last_transaction"]
            for slot, value in (("sha256", "0" * 64), ("size", 1), ("model_blob", None)):
                with pytest.raises(RemoteError) as caught:
                    c.set(record, slot, value)
                assert caught.value.code == "protected"
            c.define("holder", "def rewrite(self, record):\n    record.sha256 = '0' * 64\n    return 1\n")
            after_define = c.stats()["last_transaction"]
            with pytest.raises(RemoteError) as caught:  # a method given the record
                c.send("holder", "rewrite", {"$oid": record})
            assert caught.value.code == "protected"
            assert c.stats()["last_transaction"] == after_define != before
    finally:
        srv.stop()


def test_an_older_images_expert_records_become_kernel_objects(image_path, tmp_path):
    from batos.image.genesis import SCHEMA_KEY, SCHEMA_VERSION
    from batos.image.protection import is_kernel_object

    with opened_root(image_path) as root:
        record = adapter_record(tiny_adapter(tmp_path / "old"), "old")
        del record._kernel_slots  # as an image from before schema 6 kept it
        root["pLLM_obj"]._slots["lora_repository"]["old"] = record
        root[SCHEMA_KEY] = 5
    with opened_root(image_path) as root:
        assert root[SCHEMA_KEY] == SCHEMA_VERSION and is_kernel_object(root["pLLM_obj"]._slots["lora_repository"]["old"])


def test_an_older_images_model_choice_becomes_a_kernel_slot(image_path):
    from batos.image.genesis import SCHEMA_KEY
    from batos.image.protection import mark_kernel, protected_slots

    with opened_root(image_path) as root:
        mark_kernel(root["pLLM_obj"], ("model_bundles", "lora_repository", "active_model", "infer_", "parent*"))
        root[SCHEMA_KEY] = 6
    with opened_root(image_path) as root:
        assert "active_model_chosen" in protected_slots(root["pLLM_obj"])


@pytest.mark.parametrize("target", ["pLLM_obj", "genesis_obj"])
@pytest.mark.parametrize("slot", ["describe", "oid", "clone", "slot_names"])
def test_data_cannot_shadow_a_primitives_name(server, target, slot):
    with server.client() as c:
        before = c.stats()["last_transaction"]
        with pytest.raises(RemoteError) as caught:
            c.set(target, slot, "shadowed")
        assert caught.value.code == "protected"
        assert c.stats()["last_transaction"] == before
        assert c.send(target, "oid") == c.describe(target)["oid"]


def test_slot_names_that_do_not_print_are_refused(server):
    with server.client() as c:
        for name in ("clone\x00", "describe\u200b", "a\nb"):
            with pytest.raises(RemoteError) as caught:
                c.set("genesis_obj", name, 1)
            assert caught.value.code == "bad_request"


def test_doctor_reports_look_alike_primitives_and_huge_objects(image_path):
    with opened_root(image_path) as root:
        root["traits_obj"]._slots["Clone"] = 1
        root["traits_obj"]._slots["oid\u200b"] = 1
        wide = root["genesis_obj"].clone()
        for i in range(10_001):
            wide._slots[f"s{i}"] = i
        root["wide_obj"] = wide
    report = json.loads(run_cli("doctor", "--image", str(image_path), "--json").stdout)
    problems = "\n".join(report["problems"])
    assert "'Clone' that looks like the primitive 'clone'" in problems
    assert "looks like the primitive 'oid'" in problems
    assert "more than 10000 slots" in problems


def test_the_doctor_reports_slots_a_method_wrote_beyond_its_receiver_and_arguments(image_path):
    """Writing the receiver, an argument or an object the call made is a method's own business;
    a slot written on any other object (here one reached through a slot, shared by others) is
    kept on record and the doctor names it."""
    srv = Server(image_path).start()
    try:
        with srv.client() as c:
            shared = c.send("genesis_obj", "clone")["$oid"]
            mine, other = (c.send("genesis_obj", "clone")["$oid"] for _ in range(2))
            c.set(mine, "shared", {"$oid": shared})
            c.define(mine, "def tidy(self, other):\n    other.count = 2\n    made = self.clone()\n    made.count = 3\n"
                           "    self.count = 1\n    self._p_changed = True\n    return made.count\n")
            assert c.send(mine, "tidy", {"$oid": other}) == 3
            quiet = run_cli("doctor", "--image", str(image_path), "--json")
            assert not any("outside their receiver" in note for note in json.loads(quiet.stdout)["notes"])
            c.define(mine, "def meddle(self):\n    self.shared.count = 99\n    return 1\n")
            assert c.send(mine, "meddle") == 1
            assert c.get(shared, "count") == 99
    finally:
        srv.stop()
    report = json.loads(run_cli("doctor", "--image", str(image_path), "--json").stdout)
    assert report["problems"] == []
    notes = "\n".join(report["notes"])
    assert "1 record(s) of slots written by methods outside their receiver and arguments" in notes
    assert f"method 'meddle' sent to {mine} wrote slot 'count' of {shared} (for owner)" in notes


def test_an_outside_write_is_recorded_once_and_cannot_hide_behind_others_and_new_objects_are_the_calls(image_path):
    """Writing one throwaway slot a hundred times (each flushed by a primitive) leaves one record,
    so the write that follows is on record too; a slot of an object the call made (the copied
    child of a deep clone) is not an outside write."""
    from batos.image.protection import outside_writes

    srv = Server(image_path).start()
    try:
        with srv.client() as c:
            shared, junk, actor = (c.send("genesis_obj", "clone")["$oid"] for _ in range(3))
            for slot, value in (("shared", shared), ("junk", junk), ("kid", junk)):
                c.set(actor, slot, {"$oid": value})
            c.define(actor, "def hide(self):\n    j = self.junk\n    for i in range(100):\n        j.n = i\n"
                            "        j.oid()\n    self.shared.secret = 'tampered'\n    return 1\n")
            assert c.send(actor, "hide") == 1
            c.define(actor, "def deep(self):\n    c = self.clone(True)\n    c.kid.fresh = 1\n    return c\n")
            c.send(actor, "deep")
    finally:
        srv.stop()
    with opened_root(image_path) as root:
        total, kept = outside_writes(root)
    assert total == 2 and [(w["target"], w["slot"]) for w in kept] == [(junk, "n"), (shared, "secret")]
