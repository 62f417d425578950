"""What a person gets from the personas on the real standard model (1.5B), on questions written
apart from every prompt and example (none of them was used to tune anything): every question is
answered, no persona copies its codex example, facts with known answers are mostly right, ROBIN
talks rather than lists, and a partner who is shown the lead's answer adds to it without copying it."""

from __future__ import annotations

import concurrent.futures
import re

import pytest

from batos.mind.codex import CODICES

from conftest import Server, llm_env

pytestmark = pytest.mark.slow

QUESTIONS = {
    "technical": ["How can I make a slow SQL query with a JOIN faster?",
                  "What's a good way to structure a small Flask project?",
                  "How do I undo my last git commit but keep the changes?"],
    "emotional": ["I got rejected from a job I really wanted and feel like giving up.",
                  "My best friend moved away and I feel lonely.",
                  "I'm proud I finished my first marathon today!"],
    "factual": ["What is the capital of Australia?", "How many planets are in the solar system?",
                "Who wrote Pride and Prejudice?", "What is the chemical symbol for gold?"],
    "system": ["Is it worth rewriting our working Perl scripts in Go?",
               "Should I keep every log line forever or rotate them?"],
}
KNOWN_ANSWERS = {"What is the capital of Australia?": r"\bCanberra\b",
                 "How many planets are in the solar system?": r"\b(eight|8)\b",
                 "Who wrote Pride and Prejudice?": r"\bAusten\b",
                 "What is the chemical symbol for gold?": r"\bAu\b"}
COPY_WORDS = 8  # this many words in a row from a codex example is a copy
REPEAT_WORDS = 10  # this many words in a row from the turn before is a copy
DIALOGUES = ["My phone battery drains fast overnight. What can I do?",
             "I was left out of my friends' weekend trip and it hurts.",
             "Why is the sky blue?",
             "Is it wasteful to ask you the same question twice?"]


def shared_run(text: str, source: str, run: int) -> str | None:
    words = lambda t: re.findall(r"[a-z0-9']+", t.lower())  # noqa: E731
    said = words(source)
    runs = {" ".join(said[i:i + run]) for i in range(len(said) - run + 1)}
    mine = words(text)
    return next((" ".join(mine[i:i + run]) for i in range(len(mine) - run + 1) if " ".join(mine[i:i + run]) in runs), None)


@pytest.fixture(scope="session")  # session: two test workers may interleave modules, and this costs ~100 s
def answers(tmp_path_factory, standard_model_cache):
    env = llm_env(standard_model_cache, BATOS_DEFAULT_MODEL="standard", BATOS_MAX_TURNS="2")
    srv = Server(tmp_path_factory.mktemp("quality") / "image.fs", env=env).start()

    def ask(question: str) -> dict:
        with srv.client(timeout=900) as c:
            result = c.ask(question, depth="direct", turns=2 if question in DIALOGUES else 1)
            for turn in result["turns"][1:]:
                turn["prompts"] = [a["prompt"] for a in c.call("cycle_show", cycle=turn["cycle"])["attempts"]]
            return result
    try:
        questions = [q for group in QUESTIONS.values() for q in group] + DIALOGUES
        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # llama.cpp decodes them together
            results = dict(zip(questions, pool.map(ask, questions)))
        with srv.client() as c:
            model = c.stats()["llm"]["model"]
        yield model, results
    finally:
        srv.stop()


def test_every_question_is_answered_by_the_standard_model(answers):
    model, results = answers
    assert model.startswith("qwen2.5-coder-1.5b")
    for question, result in results.items():
        if question in DIALOGUES:
            continue
        turn = result["turns"][0]
        print(f"{result['route']['archetype']:>9} {turn['persona']:>6}: {question}\n           {turn['text'][:300]!r}")
        assert turn["state"] == "COMPLETE" and len(turn["text"].split()) >= 3, (question, turn)


def test_no_persona_copies_its_codex_example(answers):
    _, results = answers
    examples = [codex.example["answer"] for codex in CODICES]
    copies = [(q, run) for q, r in results.items() for example in examples
              if (run := shared_run(r["turns"][0]["text"], example, COPY_WORDS))]
    assert copies == []


def test_facts_with_known_answers_are_mostly_right(answers):
    _, results = answers
    right = [q for q, pattern in KNOWN_ANSWERS.items() if re.search(pattern, results[q]["turns"][0]["text"])]
    print(f"factual: {len(right)} of {len(KNOWN_ANSWERS)} right")
    babs = [results[q]["turns"][0] for q in KNOWN_ANSWERS if results[q]["turns"][0]["persona"] == "BABS"]
    assert babs and all("general knowledge" in turn["text"].lower() for turn in babs)  # no notes: she says so
    assert len(right) >= len(KNOWN_ANSWERS) - 1, {q: results[q]["turns"][0]["text"] for q in KNOWN_ANSWERS}


def test_robin_talks_rather_than_lists(answers):
    _, results = answers
    robin = [r["turns"][0]["text"] for r in results.values() if r["turns"][0]["persona"] == "ROBIN"]
    assert robin, "no question was led by ROBIN"
    for text in robin:
        assert "```" not in text and len(re.findall(r"^\s*(?:\d+[.)]|[-*•])\s+", text, re.MULTILINE)) < 2, text


def test_a_partner_sees_the_leads_answer_and_adds_to_it_without_copying(answers):
    _, results = answers
    copies = []
    for question in DIALOGUES:
        lead, partner = results[question]["turns"]
        print(f"{lead['persona']}: {lead['text'][:300]!r}\n  {partner['persona']}: {partner['text'][:300]!r}")
        assert partner["state"] == "COMPLETE" and len(partner["text"].split()) >= 3, partner
        assert f"{lead['persona']} said: <<" in partner["prompts"][0]  # the lead's words, not only its name
        if partner["persona"] == "ROBIN":
            assert "```" not in partner["text"] and len(re.findall(r"^\s*(?:\d+[.)]|[-*•])\s+", partner["text"], re.M)) < 2
        if run := shared_run(partner["text"], lead["text"], REPEAT_WORDS):
            copies.append((question, run))
    assert copies == []
