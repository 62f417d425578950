"""Writing methods with the shipped models: single-shot against the full cognitive cycle.

For each spec (selector, intent, slots, examples): **single-shot** asks the model once and accepts
the answer only if it passes the Guardian as written, compiles, and passes the examples in the
verifier; **cycle** runs a real CycleRunner (covenant repair, feedback, up to 5 iterations) on an
image holding an object with the spec's slots. Three suites: ``original`` (simple), ``harder``
and ``held_out`` (simple, written apart and judged also on cases the model never sees). Prints
success rates, median latencies and the ratio of problems solved, per model.

Run: .venv/bin/python bench/synthesis.py [--suite held_out] [--models standard,small]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import transaction

from batos.image import open_image
from batos.image.objects import oid_text
from batos.mind import guardian
from batos.mind.cycle import CyclePolicy, CycleRunner
from batos.mind.synthesis import build_messages, extract_function
from batos.sandbox.verify import verify

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engines import ENGINES, make_backend  # noqa: E402
from batos.llm.default_model import SHIPPED  # noqa: E402


def spec(selector, intent, slots, *examples):
    return {"selector": selector, "intent": intent, "slots": slots,
            "examples": [{"args": list(args), "result": result, **({"after": after} if after else {})}
                         for args, result, after in examples]}


SPECS = [
    spec("add_to_total", "add the argument to the total slot and return the new total", {"total": 10}, ([5], 15, {"total": 15})),
    spec("reset_total", "set the total slot to 0 and return 0", {"total": 7}, ([], 0, {"total": 0})),
    spec("double_total", "double the total slot and return it", {"total": 4}, ([], 8, {"total": 8})),
    spec("greet", "return 'Hello, NAME!' using the name slot", {"name": "Ada"}, ([], "Hello, Ada!", None)),
    spec("shout_name", "return the name slot in upper case", {"name": "robin"}, ([], "ROBIN", None)),
    spec("count_items", "return how many elements the items slot holds", {"items": [1, 2, 3]}, ([], 3, None)),
    spec("add_item", "append the argument to the items slot and return the new length", {"items": [1]}, ([7], 2, {"items": [1, 7]})),
    spec("sum_items", "return the sum of the numbers in the items slot", {"items": [1, 2, 3, 4]}, ([], 10, None)),
    spec("max_item", "return the largest number in the items slot", {"items": [3, 9, 2]}, ([], 9, None)),
    spec("sorted_items", "return the items slot sorted ascending, without changing the slot", {"items": [3, 1, 2]}, ([], [1, 2, 3], {"items": [3, 1, 2]})),
    spec("first_item", "return the first element of the items slot, or None if it is empty", {"items": []}, ([], None, None)),
    spec("contains", "return True if the argument is in the items slot", {"items": [1, 2]}, ([2], True, None), ([5], False, None)),
    spec("remove_item", "remove the argument from the items slot if present and return the new length", {"items": [1, 2, 3]}, ([2], 2, {"items": [1, 3]})),
    spec("average", "return the mean of the numbers in the values slot as a float", {"values": [2, 4, 6]}, ([], 4.0, None)),
    spec("set_colour", "store the argument in the colour slot and return it", {"colour": "red"}, (["blue"], "blue", {"colour": "blue"})),
    spec("increment_by", "add the argument to the count slot and return the new count", {"count": 1}, ([2], 3, {"count": 3})),
    spec("is_empty", "return True if the items slot is empty", {"items": []}, ([], True, None)),
    spec("word_count", "return the number of words in the text slot", {"text": "one two three"}, ([], 3, None)),
    spec("reverse_text", "return the text slot reversed", {"text": "abc"}, ([], "cba", None)),
    spec("initials", "return the first letter of each word of the name slot, joined", {"name": "Grace Brewster Hopper"}, ([], "GBH", None)),
    spec("square", "return the argument multiplied by itself", {}, ([7], 49, None)),
    spec("clamp", "return the argument limited to the range between the low and high slots", {"low": 0, "high": 10}, ([15], 10, None), ([-3], 0, None)),
    spec("lookup", "return the value for the argument key in the table slot, or None", {"table": {"a": 1}}, (["a"], 1, None), (["z"], None, None)),
    spec("remember", "store the value argument under the key argument in the table slot and return the table's size", {"table": {}}, (["k", 5], 1, {"table": {"k": 5}})),
    spec("balance_after", "return the balance slot minus the argument, without changing the slot", {"balance": 100}, ([30], 70, {"balance": 100})),
    spec("withdraw", "subtract the argument from the balance slot and return the new balance", {"balance": 100}, ([30], 70, {"balance": 70})),
    spec("celsius_to_fahrenheit", "convert the argument from Celsius to Fahrenheit", {}, ([100], 212.0, None)),
    spec("is_even", "return True if the argument is even", {}, ([4], True, None), ([3], False, None)),
    spec("describe_pair", "return a string 'KEY=VALUE' from the key and value slots", {"key": "a", "value": 1}, ([], "a=1", None)),
    spec("tally", "add 1 to the visits slot and return the new number of visits", {"visits": 0}, ([], 1, {"visits": 1})),
]


def ex(*args, result, kwargs=None, after=None, slots=None) -> dict:
    """One example of a harder spec: a call, its result, and optionally slots before and after."""
    example = {"args": list(args), "result": result}
    for key, value in (("kwargs", kwargs), ("after", after), ("slots", slots)):
        if value is not None:
            example[key] = value
    return example


def hard(selector, intent, slots, *examples):
    return {"selector": selector, "intent": intent, "slots": slots, "examples": list(examples), "suite": "harder"}


# Formatting details, edge cases, two-step updates, dict and list transformations, keyword arguments.
HARDER = [
    hard("format_price", "return the price slot formatted with a leading '$' and exactly two decimals", {"price": 3.5},
         ex(result="$3.50"), ex(result="$10.00", slots={"price": 10})),
    hard("pad_id", "return the id slot as a string of at least 5 digits, padded with leading zeros", {"id": 42},
         ex(result="00042"), ex(result="123456", slots={"id": 123456})),
    hard("title_words", "return the words slot (a list of strings) joined by ', ' with each word capitalized",
         {"words": ["ada", "grace"]}, ex(result="Ada, Grace")),
    hard("percent_of_total", "return the argument as a percentage of the total slot: one decimal place and a '%' sign",
         {"total": 8}, ex(3, result="37.5%")),
    hard("safe_divide", "return the a slot divided by the argument, or None when the argument is 0", {"a": 10},
         ex(2, result=5.0), ex(0, result=None)),
    hard("median_value", "return the median of the values slot (the mean of the two middle values when the count is even)",
         {"values": [3, 1, 2]}, ex(result=2), ex(result=2.5, slots={"values": [4, 1, 3, 2]})),
    hard("dedupe_items", "remove repeated elements from the items slot, keeping the first of each in order; store and return the list",
         {"items": [3, 1, 3, 2, 1]}, ex(result=[3, 1, 2], after={"items": [3, 1, 2]})),
    hard("move_funds", "move the argument amount from the checking slot to the savings slot; return [checking, savings]",
         {"checking": 100, "savings": 5}, ex(30, result=[70, 35], after={"checking": 70, "savings": 35})),
    hard("push_capped", "append the argument to the history slot, keeping only the last 3 entries; store and return the history",
         {"history": [1, 2, 3]}, ex(4, result=[2, 3, 4], after={"history": [2, 3, 4]})),
    hard("rename_key", "in the table slot, rename the key given as first argument to the second argument, keeping its value; "
         "return the sorted list of keys", {"table": {"a": 1, "b": 2}},
         ex("a", "c", result=["b", "c"], after={"table": {"b": 2, "c": 1}})),
    hard("invert_table", "return a new dict mapping each value of the table slot to its key", {"table": {"a": "x", "b": "y"}},
         ex(result={"x": "a", "y": "b"})),
    hard("group_by_length", "return a dict mapping each word length to the list of words of the words slot with that length, in order",
         {"words": ["a", "bb", "cc", "d"]}, ex(result={"1": ["a", "d"], "2": ["bb", "cc"]})),
    hard("count_letters", "return a dict counting how many times each character of the text slot occurs, ignoring spaces",
         {"text": "abba c"}, ex(result={"a": 2, "b": 2, "c": 1})),
    hard("greet_kw", "return 'GREETING, NAME!' where GREETING is the keyword argument greeting (default 'Hello') and NAME the name slot",
         {"name": "Ada"}, ex(result="Hello, Ada!"), ex(result="Hi, Ada!", kwargs={"greeting": "Hi"})),
    hard("scale_values", "return the values slot with each number multiplied by the keyword argument factor (default 2)",
         {"values": [1, 2]}, ex(result=[2, 4]), ex(result=[3, 6], kwargs={"factor": 3})),
    hard("take", "return the first n elements of the items slot, n being the keyword argument n (default 2)",
         {"items": [5, 6, 7]}, ex(result=[5, 6]), ex(result=[5], kwargs={"n": 1})),
    hard("rotate_left", "rotate the items slot left by the argument number of steps; store and return it",
         {"items": [1, 2, 3, 4]}, ex(1, result=[2, 3, 4, 1], after={"items": [2, 3, 4, 1]}),
         ex(6, result=[3, 4, 1, 2], slots={"items": [1, 2, 3, 4]})),
    hard("chunk", "return the items slot split into lists of the argument's size (the last one may be shorter)",
         {"items": [1, 2, 3, 4, 5]}, ex(2, result=[[1, 2], [3, 4], [5]])),
    hard("apply_discount", "reduce the price slot by the argument percent, rounded to 2 decimals; store and return it",
         {"price": 80}, ex(25, result=60.0, after={"price": 60.0})),
    hard("record_score", "append the argument to the scores slot and raise the best slot to it if it is higher; return best",
         {"scores": [], "best": 0}, ex(5, result=5, after={"scores": [5], "best": 5}),
         ex(3, result=7, slots={"scores": [7], "best": 7}, after={"scores": [7, 3], "best": 7})),
    hard("as_sentence", "return the items slot as an English list: 'x', 'x and y', or 'x, y and z'",
         {"items": ["x", "y", "z"]}, ex(result="x, y and z"), ex(result="x", slots={"items": ["x"]}),
         ex(result="x and y", slots={"items": ["x", "y"]})),
    hard("to_snake", "return the name slot converted from CamelCase to snake_case", {"name": "HelloWorldAgain"},
         ex(result="hello_world_again")),
    hard("stats_summary", "return a dict with keys 'min', 'max' and 'count' for the numbers in the values slot",
         {"values": [4, 1, 9]}, ex(result={"min": 1, "max": 9, "count": 3})),
    hard("merge_table", "merge the argument (a dict) into the table slot, the argument's values winning; store it and return the number of keys",
         {"table": {"a": 1}}, ex({"a": 2, "b": 3}, result=2, after={"table": {"a": 2, "b": 3}})),
    hard("word_lengths", "return a list of [word, length] pairs for the words of the text slot, longest first, ties in text order",
         {"text": "aa b cccc dd"}, ex(result=[["cccc", 4], ["aa", 2], ["dd", 2], ["b", 1]])),
]


def held(selector, intent, slots, shown, *hidden):
    """A held-out spec: ``shown`` is the example the model is given, ``hidden`` the checks it
    never sees (each may set slots of its own); success is passing both."""
    return {"selector": selector, "intent": intent, "slots": slots, "examples": [shown], "checks": list(hidden),
            "suite": "held_out"}


# Written after the cycle's changes for issue 18 and never used to tune them: simple methods like
# SPECS, each judged also on cases the model never saw.
HELD_OUT = [
    held("count_vowels", "return how many vowels (a, e, i, o, u, in either case) the text slot holds", {"text": "banana"},
         ex(result=3), ex(result=5, slots={"text": "Education"})),
    held("last_item", "return the last element of the items slot, or None if it is empty", {"items": [1, 2, 3]},
         ex(result=3), ex(result=None, slots={"items": []}), ex(result="x", slots={"items": ["x"]})),
    held("total_price", "return the sum of price times qty over the dicts in the lines slot",
         {"lines": [{"price": 2, "qty": 3}]}, ex(result=6),
         ex(result=6.0, slots={"lines": [{"price": 1.5, "qty": 2}, {"price": 3.0, "qty": 1}]})),
    held("title_name", "return the name slot with each word capitalised", {"name": "ada lovelace"},
         ex(result="Ada Lovelace"), ex(result="Grace Hopper", slots={"name": "grace hopper"})),
    held("add_tag", "add the argument to the tags slot unless it is already there, and return the tags",
         {"tags": ["a"]}, ex("b", result=["a", "b"], after={"tags": ["a", "b"]}),
         ex("a", result=["a"], slots={"tags": ["a"]}, after={"tags": ["a"]})),
    held("percent_done", "return the done slot as a percentage of the total slot, rounded to one decimal",
         {"done": 1, "total": 3}, ex(result=33.3), ex(result=25.0, slots={"done": 2, "total": 8})),
    held("longest_word", "return the longest word of the text slot (the first one if several are as long)",
         {"text": "a bbb cc"}, ex(result="bbb"), ex(result="there", slots={"text": "hi there you"})),
    held("apply_discount", "lower the price slot by the argument, a percentage, and return the new price",
         {"price": 100}, ex(10, result=90.0, after={"price": 90.0}),
         ex(50, result=25.0, slots={"price": 50}, after={"price": 25.0})),
    held("count_over", "return how many numbers in the values slot are greater than the argument",
         {"values": [1, 5, 9]}, ex(4, result=2), ex(25, result=0, slots={"values": [10, 20]})),
    held("swap_pair", "return the two elements of the pair slot in the other order, as a list", {"pair": [1, 2]},
         ex(result=[2, 1]), ex(result=["b", "a"], slots={"pair": ["a", "b"]})),
    held("unique_items", "return the items slot without repeats, each kept where it first appears",
         {"items": [3, 1, 3, 2, 1]}, ex(result=[3, 1, 2]), ex(result=["b", "a"], slots={"items": ["b", "a", "b"]})),
    held("grade", "return 'pass' if the score slot is 50 or more, else 'fail'", {"score": 70},
         ex(result="pass"), ex(result="fail", slots={"score": 49}), ex(result="pass", slots={"score": 50})),
    held("rename", "set the name slot to the argument and return the name it had before", {"name": "old"},
         ex("new", result="old", after={"name": "new"}), ex("z", result="a", slots={"name": "a"}, after={"name": "z"})),
    held("word_lengths", "return the lengths of the words of the text slot, as a list", {"text": "to be"},
         ex(result=[2, 2]), ex(result=[1, 3], slots={"text": "a abc"})),
    held("entry_count", "return how many entries the table slot holds", {"table": {"a": 1}},
         ex(result=1), ex(result=0, slots={"table": {}})),
    held("take_stock", "subtract the argument from the stock slot, never going below 0, and return the new stock",
         {"stock": 5}, ex(3, result=2, after={"stock": 2}), ex(5, result=0, slots={"stock": 2}, after={"stock": 0})),
    held("join_items", "return the items slot joined by ', '", {"items": ["a", "b"]},
         ex(result="a, b"), ex(result="", slots={"items": []})),
    held("as_hours", "return the minutes slot as a text 'H:MM'", {"minutes": 75},
         ex(result="1:15"), ex(result="0:05", slots={"minutes": 5}), ex(result="10:00", slots={"minutes": 600})),
    held("average", "return the arithmetic mean of the scores slot, or 0.0 when it is empty", {"scores": [1, 2, 3]},
         ex(result=2.0), ex(result=0.0, slots={"scores": []})),
    held("dotted_initials", "return the first letter of each word of the name slot, upper case, each followed by a dot",
         {"name": "ada king"}, ex(result="A.K."), ex(result="G.B.H.", slots={"name": "grace brewster hopper"})),
]
SUITE = [*({**item, "suite": "original"} for item in SPECS), *HARDER, *HELD_OUT]
SUITES = ("original", "harder", "held_out")


def brief_for(item: dict, oid: str = "0x99") -> dict:
    first = item["examples"][0]
    return {"oid": oid, "name": "subject", "selector": item["selector"], "args": first["args"],
            "kwargs": first.get("kwargs", {}),
            "intent": item["intent"], "examples": item["examples"], "slots": item["slots"],
            "methods": ["clone", "describe", "oid", "slot_names"], "related_sources": []}


def answers(generation) -> list[str]:
    return [generation.text, *generation.alternatives]


def single_shot(backend, item: dict) -> tuple[bool, float]:
    started = time.perf_counter()
    answer = backend.generate(build_messages(brief_for(item), []), max_new_tokens=256).text
    source = extract_function(answer, item["selector"])
    ok = False
    if source:
        try:
            guardian.audit(source, item["selector"])
            ok = verify(source, item["selector"], item["slots"], item["examples"] + item.get("checks", [])).ok
        except guardian.GuardianError:
            ok = False
    return ok, time.perf_counter() - started


def with_cycle(backend, item: dict, workdir: Path, number: int) -> tuple[bool, float, int]:
    img = open_image(str(workdir / f"cycle-{number}.fs"))
    try:
        manager = transaction.TransactionManager(explicit=True)
        conn = img.db.open(transaction_manager=manager)
        with manager:
            subject = conn.root()["genesis_obj"].clone()
            subject.name = "subject"
            for name, value in item["slots"].items():
                setattr(subject, name, value)
            conn.root()["subject_obj"] = subject
        with manager:
            target = oid_text(conn.root()["subject_obj"])
        conn.close()
        runner = CycleRunner(img.db, lambda messages, **options: answers(backend.generate(messages, max_new_tokens=256, **options)),
                             CyclePolicy(max_iterations=5), model_name=lambda: backend.name)
        first = item["examples"][0]
        started = time.perf_counter()
        cycle_id = runner.start_or_join(target, item["selector"], first["args"], first.get("kwargs", {}),
                                        item["intent"], item["examples"])
        state = runner.run(cycle_id)
        seconds = time.perf_counter() - started
        iterations = runner.read(lambda root: root["active_cycles"][cycle_id]._slots["iteration"])
        installed = runner.read(lambda root: getattr(root["subject_obj"]._slots.get(item["selector"]), "source", None))
        runner.close()
        ok = state == "COMPLETE" and (not item.get("checks") or verify(
            installed, item["selector"], item["slots"], item["checks"]).ok)  # judged on cases it never saw
        return ok, seconds, iterations
    finally:
        img.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=len(SUITE), help="run only the first N specs")
    parser.add_argument("--suite", choices=("all", *SUITES), default="all")
    parser.add_argument("--models", default="standard,small",
                        help="comma-separated shipped models to run in turn, the first compared with the others")
    parser.add_argument("--engines", default="llama.cpp",
                        help=f"comma-separated engines to run in turn, the first compared with the others ({', '.join(ENGINES)})")
    args = parser.parse_args()
    engines = [e for e in args.engines.split(",") if e]
    if set(engines) - set(ENGINES):
        parser.error(f"unknown engines: {', '.join(sorted(set(engines) - set(ENGINES)))}")
    models = [m for m in args.models.split(",") if m]
    if set(models) - set(SHIPPED):
        parser.error(f"unknown models: {', '.join(sorted(set(models) - set(SHIPPED)))} (known: {', '.join(SHIPPED)})")
    chosen = [item for item in SUITE if args.suite in ("all", item["suite"])][:args.limit]
    workdir = Path(tempfile.mkdtemp(prefix="batos-synthesis-"))
    results = {}
    for model in models:
        for engine in engines:
            name = f"{model} on {engine}"
            print(f"== {name}", flush=True)
            backend = make_backend(engine, model=SHIPPED[model])
            results[name] = run_suite(backend, chosen, workdir / model / engine)
            backend.close()
            for suite in (*SUITES, "all"):
                report([r for r in results[name] if suite in ("all", r[6])], f"{name}, {suite}")
    names = list(results)
    for other in names[1:]:
        compare(results[names[0]], results[other], names[0], other)


def run_suite(backend, chosen: list[dict], workdir: Path) -> list[tuple]:
    workdir.mkdir(parents=True)
    rows = []
    for number, item in enumerate(chosen):
        shot_ok, shot_seconds = single_shot(backend, item)
        cycle_ok, cycle_seconds, iterations = with_cycle(backend, item, workdir, number)
        rows.append((item["selector"], shot_ok, shot_seconds, cycle_ok, cycle_seconds, iterations, item["suite"]))
        print(f"{item['selector']:<24} single-shot {'ok ' if shot_ok else 'no '} {shot_seconds:6.1f} s   "
              f"cycle {'ok ' if cycle_ok else 'no '} {cycle_seconds:6.1f} s  ({iterations} iteration(s))", flush=True)
    return rows


def compare(fast: list[tuple], slow: list[tuple], fast_name: str, slow_name: str) -> None:
    """How many times faster ``fast`` wrote methods than ``slow`` (median latencies), and what each solved."""
    def median(rows, column):
        return statistics.median(r[column] for r in rows)
    print(f"\n{slow_name} / {fast_name} median latency: single-shot {median(slow, 2) / median(fast, 2):.2f}x, "
          f"cycle {median(slow, 4) / median(fast, 4):.2f}x;  solved single-shot {sum(r[1] for r in fast)} vs "
          f"{sum(r[1] for r in slow)}, cycle {sum(r[3] for r in fast)} vs {sum(r[3] for r in slow)} (of {len(fast)})")


def report(rows: list[tuple], suite: str) -> None:
    if not rows:
        return
    shots = sum(r[1] for r in rows)
    cycles = sum(r[3] for r in rows)
    n = len(rows)
    print(f"\n{suite}: {n} specs")
    print(f"  single-shot: {shots}/{n} solved ({shots / n:.0%}), median {statistics.median(r[2] for r in rows):.1f} s")
    print(f"  cycle:       {cycles}/{n} solved ({cycles / n:.0%}), median {statistics.median(r[4] for r in rows):.1f} s")
    print(f"  cycle / single-shot solved: {cycles / shots:.2f}" if shots else "  single-shot solved none")


if __name__ == "__main__":
    sys.exit(main())
