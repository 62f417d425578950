"""The real default model: imported into the image, loaded from its blobs, with real LoRA experts."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import pytest

from batos.client import RemoteError
from batos.image import open_image
from batos.image.blobs import import_folder, verify_bundle
from batos.llm.core import CognitiveCore
from batos.llm.embedded import EmbeddedBackend
from batos.llm.generation import chat
from batos.llm.settings import LLMSettings

from conftest import Server, in_transaction, llm_env, opened_root, run_cli

pytestmark = pytest.mark.slow
HAIKU = "Write a haiku about persistence"


def wait_for_state(client, states: set[str], timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        llm = client.stats()["llm"]
        if llm["state"] in states:
            return llm
        time.sleep(0.02)
    raise AssertionError(f"the model never reached {states}: {llm}")


def test_default_model_imports_into_a_fresh_image_and_generates_after_restart(image_path, model_cache):
    srv = Server(image_path, env=llm_env(model_cache)).start()
    try:
        with srv.client(timeout=600) as c:
            assert c.stats()["llm"]["state"] != "off"  # the bridge answers while the model is still coming
            first = c.send("pLLM_obj", "infer_", HAIKU, max_new_tokens=24)
            llm = c.stats()["llm"]
            maps = Path(f"/proc/{c.ping()['pid']}/maps").read_text()
    finally:
        assert srv.stop() == 0
    assert isinstance(first, str) and len(first.split()) >= 3
    assert "qwen" in llm["model"] and llm["device_map"] and llm["state"] == "ready"
    # llama.cpp serves the GGUF from the blob's committed file, mapped in place: no copy anywhere
    assert llm["engine"] == "llama.cpp" and llm["quantization"].startswith("Q4_K") and llm["threads"] >= 1
    assert "GGUF" in llm["why"] and "core" in llm["why"]
    blob_folder = Path(f"{image_path}.blob")
    assert Path(llm["model_file"]).is_relative_to(blob_folder) and llm["model_file"] in maps
    with opened_root(image_path) as root:
        bundle = root["pLLM_obj"].model_bundles[llm["model"]]
        assert bundle.files["model.gguf"].committed() == llm["model_file"]
    stats = run_cli("doctor", "--image", str(image_path))
    assert stats.returncode == 0 and "blobs" in stats.stdout

    srv = Server(image_path, endpoint=srv.endpoint, env=llm_env(model_cache)).start()
    try:
        with srv.client(timeout=600) as c:
            again = c.send("pLLM_obj", "infer_", HAIKU, max_new_tokens=24)
            models = c.call("model_list")
        assert again == first  # greedy decoding of the same weights
        assert len(models["models"]) == 1 and models["active"] == llm["model"]
    finally:
        assert srv.stop() == 0
    log = (image_path.parent / "logs" / "batos.jsonl").read_text()
    assert log.count("importing qwen") >= 1
    second_start = log[log.rindex("serving"):]
    assert "importing" not in second_start  # the second start loads from the image, imports nothing


def test_infer_streams_its_text_to_the_client_before_the_reply(image_path, model_cache):
    srv = Server(image_path, env=llm_env(model_cache)).start()
    try:
        with srv.client(timeout=600) as c:
            c.send("pLLM_obj", "infer_", "warm up", max_new_tokens=2)
            arrivals: list[tuple[float, str]] = []

            def on_event(event: dict) -> None:
                if "text" in event:
                    arrivals.append((time.perf_counter(), event["text"]))
            started = time.perf_counter()
            text = c.send("pLLM_obj", "infer_", "Explain what a linked list is.", max_new_tokens=60, on_event=on_event)
            replied = time.perf_counter()
        on_a_terminal = run_on_a_terminal("send", "pLLM_obj", "infer_", "Explain what a linked list is.",
                                          "--kw", "max_new_tokens=60", "--endpoint", srv.endpoint)
    finally:
        srv.stop()
    assert len(arrivals) >= 10
    assert "".join(piece for _, piece in arrivals) == text
    assert arrivals[0][0] - started < (replied - started) / 3  # the first piece long before the reply
    # `batos send` on a terminal prints the pieces as they come, and the text only once
    assert on_a_terminal.replace("\r\n", "\n").strip() == text.strip()


def run_on_a_terminal(*args: str) -> str:
    """What `batos ARGS` prints (stdout and stderr) when both are a terminal."""
    import os
    import pty
    import subprocess

    from conftest import BATOS

    master, slave = pty.openpty()
    process = subprocess.Popen([*BATOS, *args], stdout=slave, stderr=slave)
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal closed: the process has exited
            break
        if not chunk:
            break
        output += chunk
    process.wait(60)
    os.close(master)
    return output.decode("utf-8", "replace")


def test_kill_9_during_the_genesis_import_leaves_no_half_bundle(image_path, model_cache):
    srv = Server(image_path, env=llm_env(model_cache)).start()
    with srv.client() as c:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            progress = c.stats()["llm"].get("progress", {})
            if progress.get("what", "").startswith("importing") and progress["done"] < progress["total"]:
                break
            time.sleep(0.01)
        else:
            pytest.fail("never saw the import under way")
    srv.kill()
    with opened_root(image_path) as root:
        pllm = root["pLLM_obj"]
        if pllm.active_model is None:
            assert len(pllm.model_bundles) == 0
        else:  # the commit beat the kill: then the bundle is whole
            assert verify_bundle(pllm.model_bundles[pllm.active_model]) == []

    srv = Server(image_path, endpoint=srv.endpoint, env=llm_env(model_cache)).start()
    try:
        with srv.client(timeout=600) as c:
            assert c.send("pLLM_obj", "infer_", HAIKU, max_new_tokens=8)
            assert len(c.call("model_list")["models"]) == 1
    finally:
        srv.stop()
    assert run_cli("doctor", "--image", str(image_path)).returncode == 0


def test_logits_from_the_image_equal_logits_from_the_plain_folder(plain_model_folder, tmp_path):
    import torch

    settings = LLMSettings(model_dtype="bfloat16")
    plain = EmbeddedBackend(plain_model_folder, settings, "plain")
    expected = plain.logits("def fibonacci(n):")
    plain.close()
    del plain
    gc.collect()

    img = open_image(str(tmp_path / "image.fs"))
    try:
        with in_transaction(img) as root:
            root["pLLM_obj"].model_bundles["m"] = import_folder(plain_model_folder, "m", "test")
        with in_transaction(img) as root:
            links = root["pLLM_obj"].model_bundles["m"].link_into(tmp_path / "links")
        assert all(p.is_symlink() for p in links.iterdir())
        from_image = EmbeddedBackend(links, settings, "image")
        assert torch.equal(from_image.logits("def fibonacci(n):"), expected)
        from_image.close()
    finally:
        img.close()


def test_experts_move_from_staging_to_blobs_to_warm_to_hot_and_out(adapters, model_cache, tmp_path):
    """On the transformers engine: peft adapters loaded into the model and taken out again."""
    img = open_image(str(tmp_path / "image.fs"))
    one_adapter = (adapters / "BRICK" / "adapter_model.safetensors").stat().st_size
    settings = LLMSettings(engine="transformers", model_cache=str(model_cache), lora_staging=str(adapters),
                           default_model="small",
                           max_hot_experts=1, warm_expert_bytes=one_adapter + 1)
    core = CognitiveCore(img.db, "embedded", settings, tmp_path / "scratch")
    try:
        core.awaken()
        assert core.state == "ready", core.error
        tiers = core.stats()["experts"]
        assert tiers == {"BRICK": "cold", "ROBIN": "cold"}
        prompt = "Name three colours."
        base = core.generate(prompt, max_new_tokens=16).text
        brick = core.generate(prompt, expert="BRICK", max_new_tokens=16).text
        assert core.stats()["experts"] == {"BRICK": "hot", "ROBIN": "cold"}
        robin = core.generate(prompt, expert="ROBIN", max_new_tokens=16).text
        assert len({base, brick, robin}) == 3  # each expert changes what the model says
        # one hot slot: BRICK was evicted from the model; the byte budget keeps only ROBIN warm
        assert core.stats()["experts"] == {"BRICK": "cold", "ROBIN": "hot"}
        assert set(core.backend.peft.peft_config) == {"ROBIN"}
        assert core.generate(prompt, expert="BRICK", max_new_tokens=16).text == brick  # back, same weights
        core.backend.experts.evict("BRICK")
        assert core.backend.peft is None  # no adapter left in the model
        assert not any("lora_" in name for name, _ in core.backend.model.named_parameters())
        assert core.generate(prompt, max_new_tokens=16).text == base
        with pytest.raises(Exception, match="no expert named"):
            core.generate(prompt, expert="NOBODY", max_new_tokens=4)

        with in_transaction(img) as root:
            serials = {n: r._p_serial for n, r in root["pLLM_obj"].lora_repository.items()}
        assert core.import_staged_experts() == ["BRICK", "ROBIN"]  # again: nothing new written
        with in_transaction(img) as root:
            assert {n: r._p_serial for n, r in root["pLLM_obj"].lora_repository.items()} == serials
            assert root["pLLM_obj"].lora_repository["BRICK"].config["r"] == 8
    finally:
        core.close()
        img.close()


def test_experts_on_llama_cpp_are_gguf_adapters_applied_per_request(adapters, model_cache, tmp_path):
    """A real peft LoRA, converted to a GGUF LoRA at import, changes llama.cpp's answer; a request
    without it gets the bare answer back; the tiers work as on transformers."""
    img = open_image(str(tmp_path / "image.fs"))
    one_adapter = (adapters / "BRICK" / "adapter_model.safetensors").stat().st_size
    settings = LLMSettings(model_cache=str(model_cache), lora_staging=str(adapters),
                           default_model="small",
                           max_hot_experts=1, warm_expert_bytes=4 * one_adapter)
    core = CognitiveCore(img.db, "embedded", settings, tmp_path / "scratch")
    try:
        core.awaken()
        assert core.state == "ready", core.error
        assert core.backend.engine == "llama.cpp"
        assert core.stats()["experts"] == {"BRICK": "cold", "ROBIN": "cold"}
        prompt = "Name three colours."
        base = core.generate(prompt, max_new_tokens=16).text
        brick = core.generate(prompt, expert="BRICK", max_new_tokens=16).text
        assert core.stats()["experts"]["BRICK"] == "hot"
        assert core.generate(prompt, max_new_tokens=16).text == base  # switching back restores the bare model
        robin = core.generate(prompt, expert="ROBIN", max_new_tokens=16).text
        assert len({base, brick, robin}) == 3
        assert set(core.backend._adapters) == {"ROBIN"}  # one hot slot: BRICK's adapter was freed
        assert core.generate(prompt, expert="BRICK", max_new_tokens=16).text == brick
        # a batch runs under the expert too (its adapter's small matrices round differently when
        # several sequences decode at once, so the text is not promised to equal the answer alone)
        together = core.backend.generate_many([chat(prompt), chat(prompt)], expert="BRICK", max_new_tokens=16)
        assert all(g.text and g.text != base and g.expert == "BRICK" for g in together)
        with pytest.raises(Exception, match="no expert named"):
            core.generate(prompt, expert="NOBODY", max_new_tokens=4)
        with in_transaction(img) as root:
            record = root["pLLM_obj"].lora_repository["BRICK"]
            assert record.gguf_base == core.backend.name  # the GGUF form is kept beside the original
            assert Path(record.gguf_blob.committed()).read_bytes()[:4] == b"GGUF"
            assert Path(record.model_blob.committed()).stat().st_size == one_adapter
    finally:
        core.close()
        img.close()


def test_an_adapter_llama_cpp_cannot_apply_is_refused_and_nothing_is_written(adapters, model_cache, tmp_path):
    dora = tmp_path / "DORA"
    dora.mkdir()
    config = json.loads((adapters / "BRICK" / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    (dora / "adapter_model.safetensors").write_bytes((adapters / "BRICK" / "adapter_model.safetensors").read_bytes())
    img = open_image(str(tmp_path / "image.fs"))
    core = CognitiveCore(img.db, "embedded", LLMSettings(model_cache=str(model_cache), lora_staging=str(tmp_path / "none"),
                                                         default_model="small"),
                         tmp_path / "scratch")
    try:
        core.awaken()
        with pytest.raises(Exception, match="DoRA"):
            core.import_experts(dora)
        with in_transaction(img) as root:
            assert "DORA" not in root["pLLM_obj"].lora_repository
        assert "DORA" not in core.stats()["experts"]
    finally:
        core.close()
        img.close()


def test_experts_and_models_through_the_bridge(adapters, model_cache, gguf_model_file, plain_model_folder, image_path,
                                              tmp_path):
    srv = Server(image_path, env=llm_env(model_cache, BATOS_LORA_STAGING=str(tmp_path / "none"))).start()
    e = ("--endpoint", srv.endpoint)
    try:
        imported = run_cli("expert", "import", str(adapters / "BRICK"), *e)
        assert imported.returncode == 0, imported.stderr
        assert json.loads(imported.stdout) == {"imported": ["BRICK"]}
        base = run_cli("send", "pLLM_obj", "infer_", "Name three colours.", "--kw", "max_new_tokens=12", "--timeout", "600", *e)
        styled = run_cli("send", "pLLM_obj", "infer_", "Name three colours.", "--kw", "max_new_tokens=12", "--expert", "BRICK", *e)
        assert base.returncode == styled.returncode == 0 and base.stdout != styled.stdout
        stats = json.loads(run_cli("stats", *e).stdout)["llm"]
        assert stats["experts"] == {"BRICK": "hot"} and "qwen" in stats["model"]

        copy = run_cli("model", "import", str(gguf_model_file), "--name", "copy", *e, "--timeout", "300")
        assert copy.returncode == 0, copy.stderr
        assert json.loads(copy.stdout)["files"] == 1  # the GGUF file as it is, not a dequantized folder
        listed = json.loads(run_cli("model", "list", *e).stdout)
        assert {m["name"] for m in listed["models"]} == {listed["active"], "copy"}
        assert {m["name"]: m["source"] for m in listed["models"]}["copy"] == "upload of model.gguf"  # not a spool path
        with srv.client() as c:
            for hostile in ("../model.gguf", "a\nb.gguf", "x" * 300):
                with pytest.raises(RemoteError) as refused:
                    c.call("model_import", upload_id="none", filename=hostile)
                assert refused.value.code == "bad_request"
        used = run_cli("model", "use", "copy", *e, "--timeout", "300")
        assert used.returncode == 0, used.stderr
        again = run_cli("send", "pLLM_obj", "infer_", "Name three colours.", "--kw", "max_new_tokens=12", *e)
        assert again.stdout == base.stdout  # the same weights under another name
        styled_again = run_cli("send", "pLLM_obj", "infer_", "Name three colours.", "--kw", "max_new_tokens=12",
                               "--expert", "BRICK", *e)
        assert styled_again.stdout == styled.stdout  # the expert was converted for the new model too

        plain = run_cli("model", "import", str(plain_model_folder), "--name", "plain", *e, "--timeout", "300")
        assert plain.returncode == 0, plain.stderr
        assert run_cli("model", "use", "plain", *e, "--timeout", "300").returncode == 0
        stats = json.loads(run_cli("stats", *e).stdout)["llm"]
        assert stats["engine"] == "transformers" and stats["dtype"] == "bfloat16" and "folder" in stats["why"]
        answer = run_cli("send", "pLLM_obj", "infer_", "Name three colours.", "--kw", "max_new_tokens=12", *e)
        assert answer.returncode == 0 and answer.stdout.strip()
        missing = run_cli("model", "use", "nothing", *e)
        assert missing.returncode == 1 and "not_found" in missing.stderr
        bad = tmp_path / "bad.tar"
        bad.write_bytes(b"not a tar")
        refused = run_cli("expert", "import", str(bad), *e)
        assert refused.returncode == 1 and "import_failed" in refused.stderr
        corrupt = tmp_path / "corrupt.gguf"
        corrupt.write_bytes(b"GGUF" + bytes(range(256)) * 8)
        before = json.loads(run_cli("model", "list", *e).stdout)
        refused = run_cli("model", "import", str(corrupt), *e)
        assert refused.returncode == 1 and "import_failed" in refused.stderr and "GGUF" in refused.stderr
        assert json.loads(run_cli("model", "list", *e).stdout) == before  # nothing written
    finally:
        assert srv.stop() == 0


def test_validation_protocol_with_the_real_model(image_path, model_cache):
    """A fresh image, `send genesis_obj display_yourself`: the model writes the method, it is
    installed, and the answer shows the object's oid and each of its slots; then no model call, and a restart."""
    srv = Server(image_path, env=llm_env(model_cache)).start()
    try:
        with srv.client(timeout=900) as c:
            described = c.describe("genesis_obj")
            events = []
            shown = c.send("genesis_obj", "display_yourself", on_event=events.append)
            assert isinstance(shown, str)
            assert described["oid"] in shown
            # each slot shown, by its name or by its value: a greedy answer may print either
            assert all(slot in shown or str(value) in shown for slot, value in described["slots"].items())
            assert set(described["slots"]) >= {"name", "description"}
            assert [e["state"] for e in events if "state" in e][-1] == "COMPLETE"
            generations = c.stats()["llm"]["generations"]
            assert described["oid"] in c.send("genesis_obj", "display_yourself")
            assert c.stats()["llm"]["generations"] == generations  # answered at once, no model call
            method = c.call("methods", target="genesis_obj", selector="display_yourself")
            assert method["origin"] == "synthesized" and "qwen" in method["model"]
    finally:
        assert srv.stop() == 0
    srv = Server(image_path, endpoint=srv.endpoint, env=llm_env(model_cache)).start()
    try:
        with srv.client(timeout=600) as c:
            again = c.send("genesis_obj", "display_yourself")
            assert described["oid"] in again
            assert len(c.call("cycles_list")) == 1
    finally:
        srv.stop()
