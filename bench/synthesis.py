"""Writing methods with the real default model: single-shot against the full cognitive cycle.

For each spec (selector, intent, slots, examples): **single-shot** asks the model once and accepts
the answer only if it passes the Guardian as written, compiles, and passes the examples in the
verifier; **cycle** runs a real CycleRunner (covenant repair, feedback, up to 5 iterations) on an
image holding an object with the spec's slots. Prints success rates, median latencies and the
ratio of problems solved.
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
from batos.llm.default_model import default_model_folder
from batos.llm.embedded import EmbeddedBackend
from batos.llm.settings import LLMSettings
from batos.mind import guardian, sandbox
from batos.mind.cycle import CyclePolicy, CycleRunner
from batos.mind.synthesis import build_messages, extract_function


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


def brief_for(item: dict, oid: str = "0x99") -> dict:
    first = item["examples"][0]
    return {"oid": oid, "name": "subject", "selector": item["selector"], "args": first["args"], "kwargs": {},
            "intent": item["intent"], "examples": item["examples"], "slots": item["slots"],
            "methods": ["clone", "describe", "oid", "slot_names"], "related_sources": []}


def single_shot(backend: EmbeddedBackend, item: dict) -> tuple[bool, float]:
    started = time.perf_counter()
    answer = backend.generate(build_messages(brief_for(item), []), max_new_tokens=256).text
    source = extract_function(answer, item["selector"])
    ok = False
    if source:
        try:
            guardian.audit(source, item["selector"])
            ok = sandbox.verify(source, item["selector"], item["slots"], item["examples"]).ok
        except guardian.GuardianError:
            ok = False
    return ok, time.perf_counter() - started


def with_cycle(backend: EmbeddedBackend, item: dict, workdir: Path, number: int) -> tuple[bool, float, int]:
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
        runner = CycleRunner(img.db, lambda messages: backend.generate(messages, max_new_tokens=256).text,
                             CyclePolicy(max_iterations=5), model_name=lambda: backend.name)
        first = item["examples"][0]
        started = time.perf_counter()
        cycle_id = runner.start_or_join(target, item["selector"], first["args"], {}, item["intent"], item["examples"])
        state = runner.run(cycle_id)
        seconds = time.perf_counter() - started
        iterations = runner.read(lambda root: root["active_cycles"][cycle_id]._slots["iteration"])
        runner.close()
        return state == "COMPLETE", seconds, iterations
    finally:
        img.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=len(SPECS), help="run only the first N specs")
    args = parser.parse_args()
    backend = EmbeddedBackend(default_model_folder(LLMSettings().model_cache, "bfloat16"), LLMSettings(), "default")
    workdir = Path(tempfile.mkdtemp(prefix="batos-synthesis-"))
    rows = []
    for number, item in enumerate(SPECS[:args.limit]):
        shot_ok, shot_seconds = single_shot(backend, item)
        cycle_ok, cycle_seconds, iterations = with_cycle(backend, item, workdir, number)
        rows.append((item["selector"], shot_ok, shot_seconds, cycle_ok, cycle_seconds, iterations))
        print(f"{item['selector']:<24} single-shot {'ok ' if shot_ok else 'no '} {shot_seconds:6.1f} s   "
              f"cycle {'ok ' if cycle_ok else 'no '} {cycle_seconds:6.1f} s  ({iterations} iteration(s))", flush=True)
    shots = sum(r[1] for r in rows)
    cycles = sum(r[3] for r in rows)
    n = len(rows)
    print(f"\nspecs: {n}")
    print(f"single-shot: {shots}/{n} solved ({shots / n:.0%}), median {statistics.median(r[2] for r in rows):.1f} s")
    print(f"cycle:       {cycles}/{n} solved ({cycles / n:.0%}), median {statistics.median(r[4] for r in rows):.1f} s")
    print(f"cycle / single-shot solved: {cycles / shots:.2f}" if shots else "single-shot solved none")


if __name__ == "__main__":
    sys.exit(main())
