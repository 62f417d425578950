"""The llama.cpp engine with the real default model: batches, streaming, prompt reuse, limits."""

from __future__ import annotations

import time

import pytest
from zope.interface.verify import verifyObject

from batos.llm.generation import BackendError, chat
from batos.llm.interfaces import IBackend
from batos.llm.llamacpp import LlamaCppBackend
from batos.llm.settings import LLMSettings

pytestmark = pytest.mark.slow
QUESTIONS = ("Write a Python function that reverses a string.", "Name three colours.",
             "What is the capital of France? Answer in one sentence.")


@pytest.fixture(scope="module")
def engine(gguf_model_file):
    backend = LlamaCppBackend(gguf_model_file, LLMSettings(), "default")
    yield backend
    backend.close()


def test_the_engine_keeps_the_backend_contract_and_says_what_runs(engine, gguf_model_file):
    assert verifyObject(IBackend, engine)
    stats = engine.stats()
    assert stats["engine"] == "llama.cpp" and stats["model_file"] == str(gguf_model_file)
    assert stats["quantization"].startswith("Q4_K") and stats["threads"] >= 1


def test_a_batch_of_three_prompts_answers_as_the_prompts_do_one_by_one(engine):
    conversations = [chat(question) for question in QUESTIONS]
    alone = [engine.generate(conversation, max_new_tokens=40).text for conversation in conversations]
    together = engine.generate_many(conversations, max_new_tokens=40)
    assert [g.text for g in together] == alone
    assert len(set(alone)) == 3 and all(alone)
    assert [g.prompt_tokens for g in together] == [engine.generate(c, max_new_tokens=1).prompt_tokens for c in conversations]


def test_prompts_that_begin_alike_still_answer_as_each_alone(engine):
    """A persona's three facets: one beginning, three intents. (Decoding that beginning once and
    copying llama.cpp's KV buffer to the other sequences changed the second and third answers;
    each sequence now decodes its own prompt.)"""
    from batos.mind.answer_prompts import facet_messages
    from batos.mind.codex import CODICES
    from batos.mind.cycle import facet_system

    brick = CODICES[0]
    question = "My script crashes when the config file is missing. How do I fix it?"
    conversations = [facet_messages(facet_system(intent, brick.identity), f"Your view, as {selector}?", question)
                     for selector, intent in brick.facets.items()]
    alone = []
    for conversation in conversations:
        engine.forget_prompts()
        alone.append(engine.generate(conversation, max_new_tokens=96).text)
    engine.forget_prompts()
    assert [g.text for g in engine.generate_many(conversations, max_new_tokens=96)] == alone


def test_more_prompts_than_sequences_are_answered_in_order(gguf_model_file):
    two = LlamaCppBackend(gguf_model_file, LLMSettings(parallel_sequences=2), "two")
    try:
        conversations = [chat(question) for question in QUESTIONS]
        assert [g.text for g in two.generate_many(conversations, max_new_tokens=12)] == \
               [two.generate(c, max_new_tokens=12).text for c in conversations]
    finally:
        two.close()


def test_streamed_pieces_arrive_before_the_end_and_join_to_the_text(engine):
    arrivals: list[tuple[float, str]] = []
    started = time.perf_counter()
    generation = engine.generate(chat("Explain in a few sentences what a hash table is."), max_new_tokens=80,
                                 stream=lambda piece: arrivals.append((time.perf_counter(), piece)))
    ended = time.perf_counter()
    assert len(arrivals) >= 10
    assert "".join(piece for _, piece in arrivals) == generation.text
    assert arrivals[0][0] - started < (ended - started) / 3  # the first piece came early, not at the end


def test_a_stop_string_ends_the_text_and_is_never_streamed(engine):
    pieces: list[str] = []
    full = engine.generate(chat("Count from 1 to 20, separated by commas."), max_new_tokens=60).text
    assert "7" in full
    cut = engine.generate(chat("Count from 1 to 20, separated by commas."), max_new_tokens=60, stop=["7"],
                          stream=pieces.append)
    assert cut.text == full[:full.index("7")]
    assert "".join(pieces) == cut.text


def test_a_prompt_that_starts_like_the_last_decodes_only_what_is_new_and_answers_the_same(engine, gguf_model_file):
    system = "You are a careful Python programmer. Answer with one short function and nothing else."
    engine.generate(chat("Write add(a, b).", system), max_new_tokens=24)
    reused = engine.reused_tokens
    second = engine.generate(chat("Write subtract(a, b).", system), max_new_tokens=24)
    assert engine.reused_tokens - reused >= 20  # the system prompt's tokens were not decoded again
    fresh = LlamaCppBackend(gguf_model_file, LLMSettings(), "fresh")
    try:
        assert fresh.generate(chat("Write subtract(a, b).", system), max_new_tokens=24).text == second.text
    finally:
        fresh.close()


def test_a_prompt_decoded_in_small_chunks_answers_as_decoded_whole(engine, gguf_model_file):
    small = LlamaCppBackend(gguf_model_file, LLMSettings(batch_tokens=16, parallel_sequences=1), "chunks")
    try:
        ask = chat("Write a Python class for a bank account with deposit, withdraw and a balance that can "
                   "never go below zero; raise ValueError otherwise, and document every method briefly.")
        engine.forget_prompts()
        assert small.generate(ask, max_new_tokens=32).text == engine.generate(ask, max_new_tokens=32).text
    finally:
        small.close()


def test_sampled_answers_are_repeatable_with_their_seed(engine):
    ask = chat("Invent a name for a cat.")
    first = engine.generate(ask, max_new_tokens=12, temperature=1.0, seed=7, samples=3)
    again = engine.generate(ask, max_new_tokens=12, temperature=1.0, seed=7, samples=3)
    assert (first.text, *first.alternatives) == (again.text, *again.alternatives)
    assert len(first.alternatives) == 2 and len({first.text, *first.alternatives}) >= 2


def test_a_prompt_longer_than_the_context_is_a_permanent_error(gguf_model_file):
    small = LlamaCppBackend(gguf_model_file, LLMSettings(context_size=64, parallel_sequences=1), "small")
    try:
        with pytest.raises(BackendError, match="BATOS_CONTEXT_SIZE") as caught:
            small.generate(chat("word " * 200), max_new_tokens=4)
        assert caught.value.transient is False
        assert small.generate(chat("Hi"), max_new_tokens=4).text  # still serving
    finally:
        small.close()
