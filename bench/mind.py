"""The Composite Mind on the shipped models (llama.cpp), 2 cores.

  (a) router: the image's seed exemplars on the old labelled set, the dev set and the held-out set
      (and 5-fold cross-validation on the old set); how the held-out routes were decided and the
      share that asked the model; warm route latency p50/p99 against embedding the question alone
  (b) facets: three facet generations batched (generate_many) against the same three one after
      another, median of --repeats
  (c) time to the first streamed token of `ask` (direct) against a bare `infer_` of the same
      prompt length, through a real UVM
  (d) a whole `ask` (route + lead with facets + a partner turn): seconds, tokens generated, and
      the overhead over the sum of its model calls
  and three whole transcripts (one per archetype) for bench/README.md.

    .venv/bin/python bench/mind.py [--repeats 3] [--parts router,facets,ask] [--models standard,small]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))

from batos.llm.embeddings import Embedder  # noqa: E402
from batos.mind.answer_prompts import facet_messages  # noqa: E402
from batos.mind.codex import CODICES  # noqa: E402
from batos.mind.cycle import facet_system  # noqa: E402
from batos.mind.exemplars import seed_exemplars  # noqa: E402
from batos.mind.router import Exemplar, Router  # noqa: E402

QUESTION = "My script crashes when the config file is missing. How do I fix it?"
TRANSCRIPTS = ("My script crashes when the config file is missing. How do I fix it?",
               "I'm anxious about tomorrow's job interview and I can't stop thinking about it.",
               "What is the boiling point of water on Everest, and why is it lower than at sea level?")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def labelled_questions(name: str) -> list[Exemplar]:
    return [Exemplar(**json.loads(line)) for line in (HERE / name).read_text().splitlines() if line.strip()]


def router_figures() -> dict:
    """Accuracy of the image's seed exemplars on the old labelled set, the dev set (the rules were
    chosen looking at it) and the held-out set (never tuned on); 5-fold cross-validation on the old
    set; how each held-out route was decided; warm route latency against embedding the question
    alone (the baseline: what any embedding router pays)."""
    embedder = Embedder()
    embedder.load()
    rows = labelled_questions("router_queries.jsonl")
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    correct = 0
    for fold in range(5):
        test = shuffled[fold::5]
        train = [r for i, r in enumerate(shuffled) if i % 5 != fold]
        router = Router(embedder, lambda train=train: train)
        correct += sum(router.route(row.text, tie_break=False)["archetype"] == row.archetype for row in test)
    seeds = [Exemplar(**e) for e in seed_exemplars()]
    asked: list[str] = []
    seed_router = Router(embedder, lambda: seeds, tie_breaker=lambda question: asked.append(question))
    seed_router.warm()
    figures = {"cv_accuracy_old": round(correct / len(rows), 3)}
    for name, file in (("old", "router_queries.jsonl"), ("dev", "router_dev.jsonl"), ("held_out", "router_held_out.jsonl")):
        questions = labelled_questions(file)
        figures[f"{name}_accuracy"] = round(sum(seed_router.route(q.text, tie_break=False)["archetype"] == q.archetype
                                                for q in questions) / len(questions), 3)
    held_out = labelled_questions("router_held_out.jsonl")
    decided = [seed_router.route(q.text)["decided_by"] for q in held_out]
    figures["held_out_decided_by"] = {way: decided.count(way) for way in sorted(set(decided))}
    figures["held_out_model_call_share"] = round(len(asked) / len(held_out), 3)
    route_ms, embed_ms = [], []
    for _ in range(3):
        for q in held_out:
            started = time.perf_counter()
            embedder.encode_query(q.text)
            embed_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            seed_router.route(q.text, tie_break=False)
            route_ms.append((time.perf_counter() - started) * 1000)
    figures.update(route_p50_ms=round(percentile(route_ms, 0.5), 2), route_p99_ms=round(percentile(route_ms, 0.99), 2),
                   embed_only_p50_ms=round(percentile(embed_ms, 0.5), 2),
                   route_over_embed=round(percentile(route_ms, 0.5) / percentile(embed_ms, 0.5), 2))
    return figures


def facet_conversations(question: str) -> list:
    brick = CODICES[0]
    return [facet_messages(facet_system(intent, brick.identity), f"Your view, as {selector}?", question)
            for selector, intent in brick.facets.items()]


def facet_figures(repeats: int, model: str = "standard") -> dict:
    """Cold: every prompt decoded from scratch. Warm: as in a running UVM, each sequence still
    holds the facet prompt it answered last (a new question each time); one after another, the
    three share one sequence."""
    from engines import make_backend

    from batos.llm.default_model import SHIPPED

    backend = make_backend("llama.cpp", model=SHIPPED[model])
    figures = {}
    try:
        for mode in ("cold", "warm"):
            batched, alone, tokens, same = [], [], 0, 0
            for repeat in range(repeats):
                conversations = facet_conversations(TRANSCRIPTS[repeat % len(TRANSCRIPTS)] if mode == "warm" else QUESTION)
                if mode == "cold":
                    backend.forget_prompts()
                started = time.perf_counter()
                together = backend.generate_many(conversations, max_new_tokens=96)
                batched.append(time.perf_counter() - started)
                if mode == "cold":
                    backend.forget_prompts()
                started = time.perf_counter()
                one_by_one = [backend.generate(c, max_new_tokens=96) for c in conversations]
                alone.append(time.perf_counter() - started)
                tokens += sum(g.completion_tokens for g in together)
                same += sum(a.text == b.text for a, b in zip(together, one_by_one))
                if mode == "cold":  # prompts decoded whole: the same text batched or alone
                    assert [g.text for g in together] == [g.text for g in one_by_one]
            figures[mode] = {"tokens_per_run": tokens // repeats, "batched_s": round(statistics.median(batched), 2),
                             "tokens_per_s_one_after_another": round(tokens / repeats / statistics.median(alone), 1),
                             "one_after_another_s": round(statistics.median(alone), 2),
                             "speedup": round(statistics.median(alone) / statistics.median(batched), 2),
                             "same_text": f"{same}/{3 * repeats}"}
    finally:
        backend.close()
    return {"facets": 3, **figures}


def uvm_figures(repeats: int, model: str = "standard") -> tuple[dict, list[dict]]:
    from conftest import Server

    from batos.llm.settings import LLMSettings

    folder = Path(tempfile.mkdtemp(prefix="bench-mind-"))
    srv = Server(folder / "image.fs", env={"BATOS_LLM": "embedded", "BATOS_MODEL_CACHE": LLMSettings().model_cache,
                                           "BATOS_DEFAULT_MODEL": model})
    srv.start()
    try:
        with srv.client(timeout=900) as c:
            c.send("pLLM_obj", "infer_", "Say hello.", max_new_tokens=4)  # the model is loaded
            c.ask("Warm up: how do I open a file?", depth="direct")
            ttft_ask, ttft_infer = [], []
            for _ in range(repeats):
                asked: list[dict] = []
                ttft_ask.append(first_piece(lambda on: asked.append(
                    c.ask(QUESTION, persona="BRICK", depth="direct", on_event=on))))
                ttft_infer.append(first_piece(lambda on: c.call("send", target="pLLM_obj", selector="infer_",
                                                                args=[same_length_prompt()], on_event=on,
                                                                kwargs={"max_new_tokens": 160, "system": brick_system()})))
            whole = []
            for _ in range(repeats):
                started = time.perf_counter()
                result = c.ask(QUESTION, depth="facets")
                seconds = time.perf_counter() - started
                cycles = [c.call("cycle_show", cycle=t["cycle"]) for t in result["turns"]]
                model = sum(a.get("generation_seconds") or 0 for x in cycles for a in x["attempts"])
                whole.append({"seconds": seconds, "model_seconds": model, "turns": len(result["turns"]),
                              "facets": len(result["turns"][0]["facets"]),
                              "words": sum(len((t["text"] or "").split()) for t in result["turns"])})
            transcripts = [ask_or_reason(c, q) for q in TRANSCRIPTS]
            llm = c.stats()["llm"]
    finally:
        srv.stop()
    middle = sorted(whole, key=lambda w: w["seconds"])[len(whole) // 2]
    figures = {"ttft_ask_s": round(statistics.median(ttft_ask), 3), "ttft_infer_s": round(statistics.median(ttft_infer), 3),
               "ttft_ratio": round(statistics.median(ttft_ask) / statistics.median(ttft_infer), 2),
               "ask_seconds": round(middle["seconds"], 2), "ask_model_seconds": round(middle["model_seconds"], 2),
               "ask_overhead": round(1 - middle["model_seconds"] / middle["seconds"], 3),
               "ask_turns": middle["turns"], "ask_facets": middle["facets"], "ask_words": middle["words"],
               "engine": llm.get("engine")}
    return figures, transcripts


def ask_or_reason(c, question: str) -> dict:
    from batos.client import RemoteError

    try:
        return c.ask(question)
    except RemoteError as exc:
        route = c.route(question)
        return {"route": route, "turns": [{"persona": route["lead"], "facets": [], "text": None, "reason": exc.message}]}


def brick_system() -> str:
    from batos.mind.answer_prompts import persona_system

    return persona_system({**persona_codex_of_brick(), "name": "BRICK"})


def persona_codex_of_brick() -> dict:
    brick = CODICES[0]
    return {"identity": brick.identity, "mandate": brick.mandate, "voice": brick.voice}


def same_length_prompt() -> str:
    """The lead's prompt as one user message: the codex's example exchange, then the question (the
    ask's prompt has these as three chat turns: a few template tokens more)."""
    example = CODICES[0].example
    return f"{example['question']}\n{example['answer']}\n{QUESTION}"


def first_piece(call) -> float:
    started = time.perf_counter()
    seen: list[float] = []

    def on(event: dict) -> None:
        if "text" in event and not seen:
            seen.append(time.perf_counter() - started)
    call(on)
    return seen[0] if seen else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default="router,facets,ask", help="which parts to run (default: all)")
    parser.add_argument("--models", default="standard,small", help="shipped models for facets and ask, in turn")
    args = parser.parse_args()
    parts = args.parts.split(",")
    if "router" in parts:
        print("router:", json.dumps(router_figures()), flush=True)
    for model in args.models.split(","):
        if "facets" in parts:
            print(f"facets, {model}:", json.dumps(facet_figures(args.repeats, model)), flush=True)
        if "ask" in parts:
            figures, transcripts = uvm_figures(args.repeats, model)
            print(f"ask, {model}:", json.dumps(figures), flush=True)
            show(transcripts)


def show(transcripts: list[dict]) -> None:
    for result in transcripts:
        route = result["route"]
        print(f"\n### {route['archetype']}: {route['lead']}, then {', '.join(route['partners'])}\n")
        for turn in result["turns"]:
            facets = f" (facets: {', '.join(turn['facets'])})" if turn["facets"] else ""
            print(f"**{turn['persona']}**{facets}: {turn['text'] or '(no answer: ' + str(turn['reason']) + ')'}\n")


if __name__ == "__main__":
    main()
