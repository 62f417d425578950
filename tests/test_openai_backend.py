"""The OpenAI-compatible backend against a small OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import time

import pytest

from batos.llm.generation import BackendError, ConfigurationError
from batos.llm.openai_http import OpenAIBackend
from batos.llm.settings import LLMSettings

from conftest import JsonHandler, Server, free_port, serve_http


class ChatServer(JsonHandler):
    """Answers /v1/chat/completions; the last user message steers it (for the error paths)."""

    received: list[dict] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ChatServer.received.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        prompt = body["messages"][-1]["content"]
        if self.path != "/v1/chat/completions":
            return self.answer(404, {"error": "no such path"})
        if prompt == "fail-500":
            return self.answer(500, {"error": "boom"})
        if prompt == "fail-400":
            return self.answer(400, {"error": "bad"})
        if prompt == "slow":
            time.sleep(3)
        if prompt == "garbage":
            return self.answer(200, {"no": "choices"})
        system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
        text = f"echo[{system}]: {prompt}"
        self.answer(200, {"choices": [{"message": {"role": "assistant", "content": text}}],
                           "usage": {"prompt_tokens": 7, "completion_tokens": 3}})



@pytest.fixture
def chat_server():
    ChatServer.received.clear()
    with serve_http(ChatServer) as url:
        yield url


def backend(url, timeout=2.0, **extra) -> OpenAIBackend:
    return OpenAIBackend(LLMSettings(openai_base_url=url, openai_model="tiny", openai_timeout=timeout, **extra))


def test_generation_and_expert_as_system_prompt(chat_server, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sekrit")
    b = backend(chat_server, openai_api_key_env="TEST_KEY")
    b.know_expert("BRICK", "You are BRICK, a builder.")
    plain = b.generate([{"role": "user", "content": "hello"}], max_new_tokens=5, stop=["\n"], seed=3)
    assert plain.text == "echo[]: hello" and plain.prompt_tokens == 7 and plain.completion_tokens == 3
    styled = b.generate([{"role": "system", "content": "ignored"}, {"role": "user", "content": "hi"}], expert="BRICK")
    assert styled.text == "echo[You are BRICK, a builder.]: hi"
    first = ChatServer.received[0]
    assert first["auth"] == "Bearer sekrit"
    assert first["body"]["max_tokens"] == 5 and first["body"]["stop"] == ["\n"] and first["body"]["seed"] == 3


@pytest.mark.parametrize("prompt, transient", [("fail-500", True), ("fail-400", False), ("garbage", False)])
def test_errors_are_classified(chat_server, prompt, transient):
    with pytest.raises(BackendError) as caught:
        backend(chat_server).generate([{"role": "user", "content": prompt}])
    assert caught.value.transient is transient


def test_timeout_and_refused_connection_are_transient(chat_server):
    with pytest.raises(BackendError, match="within") as caught:
        backend(chat_server, timeout=0.5).generate([{"role": "user", "content": "slow"}])
    assert caught.value.transient
    with pytest.raises(BackendError) as refused:
        backend(f"http://127.0.0.1:{free_port()}/v1").generate([{"role": "user", "content": "x"}])
    assert refused.value.transient


def test_unknown_expert_is_permanent(chat_server):
    with pytest.raises(BackendError, match="no expert") as caught:
        backend(chat_server).generate([{"role": "user", "content": "x"}], expert="NOBODY")
    assert not caught.value.transient


def test_model_name_is_required():
    with pytest.raises(ConfigurationError, match="BATOS_OPENAI_MODEL"):
        OpenAIBackend(LLMSettings())


def test_uvm_serves_infer_through_the_openai_backend(chat_server, tmp_path):
    srv = Server(tmp_path / "img.fs", env={"BATOS_LLM": "openai", "BATOS_OPENAI_BASE_URL": chat_server,
                                           "BATOS_OPENAI_MODEL": "tiny", "BATOS_OPENAI_TIMEOUT": "1"}).start()
    try:
        with srv.client() as c:
            assert c.send("pLLM_obj", "infer_", "Write a haiku about persistence") == "echo[]: Write a haiku about persistence"
            with pytest.raises(Exception) as caught:
                c.send("pLLM_obj", "infer_", "fail-500")
            assert caught.value.code == "backend_error" and "transient" in caught.value.message
            with pytest.raises(Exception) as slow:
                c.send("pLLM_obj", "infer_", "slow")
            assert slow.value.code == "backend_error"
            with pytest.raises(Exception) as bad:
                c.send("pLLM_obj", "infer_", "x", nonsense=1)
            assert bad.value.code == "bad_request"
            llm = c.stats()["llm"]
            assert llm["backend"] == "openai" and llm["state"] == "ready" and "tiny" in llm["model"]
    finally:
        assert srv.stop() == 0
