"""Opening images: genesis, resume, migrations, schema refusal, locks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from batos.image import ImageError, ImageLockedError, open_image
from batos.image import genesis as genesis_module
from batos.image.genesis import SCHEMA_KEY, SchemaTooNewError
from batos.image.upkeep import lock_state

from conftest import opened_root

HOLD_LOCK = """
import sys, time
from batos.image import open_image
img = open_image(sys.argv[1])
print("ready", flush=True)
time.sleep(120)
"""


def hold_image(path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_genesis_creates_the_primordial_objects_once(image_path):
    with opened_root(image_path) as root:
        names = set(root.keys())
        first_oid = root["genesis_obj"]._p_oid
        assert root["genesis_obj"].name == "genesis"
        assert isinstance(root["genesis_obj"].description, str)
    assert {"traits_obj", "genesis_obj", "pLLM_obj", "memory_manager_obj", "knowledge_catalog_obj",
            "psm_prototypes_obj", "orchestrator_obj", "alfred_prototype_obj", "active_cycles"} <= names

    with opened_root(image_path) as root:
        assert root["genesis_obj"]._p_oid == first_oid


def test_newer_schema_is_refused_and_the_image_is_untouched(image_path):
    with opened_root(image_path) as root:
        root[SCHEMA_KEY] = 99
    before = image_path.read_bytes()
    with pytest.raises(SchemaTooNewError, match="99"):
        open_image(str(image_path))
    assert image_path.read_bytes() == before
    assert lock_state(str(image_path)).startswith("unlocked")


def test_older_schema_is_migrated(image_path, monkeypatch):
    img = open_image(str(image_path))
    img.close()
    calls = []

    def add_widget(root):
        calls.append(root[SCHEMA_KEY])
        root["widget_obj"] = "made by migration"

    monkeypatch.setattr(genesis_module, "SCHEMA_VERSION", genesis_module.SCHEMA_VERSION + 1)
    monkeypatch.setitem(genesis_module.MIGRATIONS, genesis_module.SCHEMA_VERSION - 1, add_widget)
    with opened_root(image_path) as root:
        assert root[SCHEMA_KEY] == genesis_module.SCHEMA_VERSION
        assert root["widget_obj"] == "made by migration"
    assert calls == [genesis_module.SCHEMA_VERSION - 1]
    img = open_image(str(image_path))  # already migrated: runs nothing more
    img.close()
    assert len(calls) == 1


def test_schema_1_image_gains_the_model_repositories_and_cycle_states(image_path):
    with opened_root(image_path) as root:  # make it look like an image written by schema 1
        pllm = root["pLLM_obj"]
        for slot in ("model_bundles", "lora_repository", "active_model", "infer_"):
            del pllm._slots[slot]
        for state in genesis_module.PSM_STATES:
            del root["psm_prototypes_obj"]._slots[state]
        del root["traits_obj"]._slots["oid"]
        root[SCHEMA_KEY] = 1
    with opened_root(image_path) as root:
        assert root[SCHEMA_KEY] == genesis_module.SCHEMA_VERSION
        assert root["psm_prototypes_obj"].SYNTHESIZING.name == "SYNTHESIZING"
        assert root["genesis_obj"].oid() == hex(int.from_bytes(root["genesis_obj"]._p_oid, "big"))
        pllm = root["pLLM_obj"]
        assert len(pllm.model_bundles) == 0 and len(pllm.lora_repository) == 0
        assert pllm._slots["infer_"].primitive == "infer"


def test_second_opener_gets_the_holders_pid(image_path):
    holder = hold_image(image_path)
    try:
        with pytest.raises(ImageLockedError) as caught:
            open_image(str(image_path))
        assert caught.value.pid == holder.pid
        assert str(holder.pid) in str(caught.value)
    finally:
        holder.kill()
        holder.wait()


def test_lock_left_by_a_killed_process_is_no_obstacle(image_path):
    holder = hold_image(image_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (image_path.parent / "image.fs.lock").exists()
    img = open_image(str(image_path))
    img.close()


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        open_image(str(tmp_path / "nowhere" / "image.fs"))
    assert not (tmp_path / "nowhere").exists()


def test_memory_uri_opens_a_fresh_image():
    with opened_root("memory://") as root:
        assert root["genesis_obj"].name == "genesis"
    assert not os.path.exists("memory:")
