"""One contract, both model backends: what IBackend promises, checked against each."""

from __future__ import annotations

import pytest
from zope.interface.verify import verifyObject

from batos.llm.embedded import EmbeddedBackend
from batos.llm.generation import BackendError, Generation
from batos.llm.interfaces import IBackend
from batos.llm.openai_http import OpenAIBackend
from batos.llm.settings import LLMSettings

from conftest import serve_http
from test_openai_backend import ChatServer


@pytest.fixture(params=["openai", pytest.param("embedded", marks=pytest.mark.slow)])
def backend(request):
    if request.param == "embedded":
        made = EmbeddedBackend(request.getfixturevalue("plain_model_folder"), LLMSettings(), "default")
        yield made
        made.close()
    else:
        with serve_http(ChatServer) as url:
            made = OpenAIBackend(LLMSettings(openai_base_url=url, openai_model="tiny", openai_timeout=5))
            yield made
            made.close()


def test_the_backend_keeps_the_contract(backend):
    assert verifyObject(IBackend, backend)
    generation = backend.generate([{"role": "user", "content": "Say hello."}], max_new_tokens=8)
    assert isinstance(generation, Generation) and isinstance(generation.text, str) and generation.text
    assert generation.completion_tokens >= 1 and generation.seconds >= 0
    again = backend.generate([{"role": "user", "content": "Say hello."}], max_new_tokens=8, temperature=0.0)
    assert again.text == generation.text  # greedy is repeatable
    sampled = backend.generate([{"role": "user", "content": "Say hello."}], max_new_tokens=8, temperature=0.7, seed=3)
    assert isinstance(sampled.text, str)
    with pytest.raises(BackendError) as caught:
        backend.generate([{"role": "user", "content": "hi"}], expert="no-such-expert")
    assert caught.value.transient is False and caught.value.code == "backend_error"
    stats = backend.stats()
    assert isinstance(stats, dict) and stats
    assert backend.waiting == 0
