"""Asking a model for a missing method: the covenant prompt, and taking the function out of the answer."""

from __future__ import annotations

import ast
import json
import os
import re
import textwrap
from typing import Any

from batos.llm.generation import Message

# The same for every mission, so that the model's prompt cache keeps it from one method to the next.
SYSTEM_PROMPT = """You write exactly one Python method for a persistent prototype object system.
Rules:
1. Answer with one function definition, the `def` line the message asks for, and nothing else: no prose, no imports, no classes, no example calls.
2. `self` is the object receiving the message. Read and write its slots as attributes, e.g. `self.total`.
3. The Persistence Covenant: if the function assigns any `self.<slot>`, then the statement just before its final `return` (or its last statement) must be `self._p_changed = True`.
4. Never use names or attributes that begin with `_` (only `self._p_changed` is allowed), and never use eval, exec, open, compile, globals, vars, getattr or setattr.
5. Return a plain value: str, int, float, bool, None, list or dict.
6. Every object also understands `self.oid()` (its id as text), `self.slot_names()` (a list of its slot names) and `self.describe()`. A method that displays or describes the object should include both its oid and its slot names.

Two examples of good answers:
```python
def show_summary(self):
    return f"{self.oid()}: " + ", ".join(self.slot_names())
```
```python
def deposit(self, amount):
    self.balance = self.balance + amount
    self._p_changed = True
    return self.balance
```"""

DISPLAY_WORDS = ("display", "describe", "show", "summary", "summarize", "print", "repr", "inspect")
FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def describe_value(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def example_call(selector: str, example: dict[str, Any], limit: int = 300) -> str:
    """An example as the call it stands for: ``with key='a', value=1: describe_pair() -> 'a=1'``.
    Shown a JSON record instead, a model returns the record itself."""
    if not isinstance(example, dict):
        return f"{selector}(...) -> {example!r}"[:limit]
    pairs = lambda key: example[key].items() if isinstance(example.get(key), dict) else ()  # noqa: E731
    args = example.get("args") if isinstance(example.get("args"), list) else []
    inside = ", ".join([*(repr(a) for a in args), *(f"{_shown_name(k)}={v!r}" for k, v in pairs("kwargs"))])
    text = f"{selector}({inside})"
    if pairs("slots"):
        text = "with " + ", ".join(f"{_shown_name(k)}={v!r}" for k, v in pairs("slots")) + f": {text}"
    text += f" -> {example['result']!r}" if "result" in example else " runs without error"
    if pairs("after"):
        text += "; afterwards " + ", ".join(f"{_shown_name(k)} is {v!r}" for k, v in pairs("after"))
    return text if len(text) <= limit else text[:limit] + " ..."


def _shown_name(name: Any) -> str:
    """A slot or keyword name as the prompt shows it: as it is when it is an identifier, else its
    repr, so a name can never add a line of its own to the prompt."""
    return name if isinstance(name, str) and name.isidentifier() else repr(name)


def writer_line(persona: str | None) -> str:
    """The last line of the system prompt: who writes (after the rules, so the rules' tokens stay a
    prefix every mission shares)."""
    return f"\nYou are {persona}, writing this method for BatOS." if persona else ""


def build_messages(brief: dict[str, Any], attempts: list[dict[str, Any]], persona: str | None = None) -> list[Message]:
    """The conversation for the next attempt: the mission, then what went wrong so far."""
    selector = brief["selector"]
    slots = "\n".join(f"  - {name}: {describe_value(value)}" for name, value in brief["slots"].items()) or "  (none)"
    call = ", ".join([*(describe_value(a) for a in brief["args"]),
                      *(f"{k}={describe_value(v)}" for k, v in brief["kwargs"].items())])
    lines = [
        f"The object {brief['name'] or brief['oid']} received the message `{selector}({call})`, "
        f"which nothing in its delegation chain understands.",
        f"Its slots:\n{slots}",
    ]
    if brief.get("methods"):
        lines.append("Methods it already understands: " + ", ".join(brief["methods"]))
    for source in brief.get("related_sources", []):
        lines.append(f"A related method:\n```python\n{source}```")
    for chunk in brief.get("knowledge", []):
        lines.append(f"From the memory ({os.path.basename(chunk['source'])}):\n{chunk['text']}")
    intent = brief.get("intent") or f"what its name, {selector!r}, says"
    lines.append(f"What the method must do: {intent}")
    if any(word in selector for word in DISPLAY_WORDS):
        lines.append("It shows the object, so its answer must contain `self.oid()` and the names from `self.slot_names()`.")
    for example in brief.get("examples", []):
        lines.append(f"Example: {example_call(selector, example)}")
    lines.append(f"Write `{signature(brief)}` so that the call above works.")
    messages: list[Message] = [
        {"role": "system", "content": SYSTEM_PROMPT + writer_line(persona)},
        {"role": "user", "content": "\n\n".join(lines)},
    ]
    for attempt in attempts[-2:]:  # the last two failures are enough context for a small model
        messages.append({"role": "assistant", "content": f"```python\n{attempt['candidate'] or attempt['answer']}\n```"})
        messages.append({"role": "user", "content": f"That was rejected: {attempt['verdict']}\n"
                                                    f"Write the corrected `{signature(brief)}`."})
    return messages


def signature(brief: dict[str, Any]) -> str:
    """``def selector(self, ...)`` with real parameter names: one per positional argument seen in
    the call or the examples, and every keyword argument seen, with a default."""
    calls = [{"args": brief.get("args") or [], "kwargs": brief.get("kwargs") or {}}, *brief.get("examples", [])]
    positional = max((len(call.get("args") or []) for call in calls), default=0)
    names = ["value"] if positional == 1 else [f"arg{i}" for i in range(1, positional + 1)]
    keywords = sorted({key for call in calls for key in (call.get("kwargs") or {})})
    return f"def {brief['selector']}({', '.join(['self', *names, *(f'{k}=None' for k in keywords)])})"


SAMPLES_PER_REVISION = 3


def sampling(iteration: int) -> dict[str, Any]:
    """Generation settings for an attempt: the first is greedy; each revision samples several
    answers in one batched call, hotter each time, with a seed of its own, so a revision is never
    the greedy repeat of the one before."""
    if iteration <= 1:
        return {"temperature": 0.0, "seed": None}
    return {"temperature": min(0.7 + 0.15 * (iteration - 2), 1.0), "seed": 1000 + iteration,
            "samples": SAMPLES_PER_REVISION}


def extraction_problem(answer: str, selector: str) -> str:
    """Why no function named ``selector`` could be taken out of ``answer``: the SyntaxError and its
    line when the code does not parse, else what is missing."""
    blocks = [block for block in (*FENCE.findall(answer), answer) if "def " in block]  # code, not prose
    for block in blocks:
        try:
            ast.parse(textwrap.dedent(block))
        except SyntaxError as exc:
            line = (exc.text or "").strip()
            return (f"the code does not parse: {exc.msg} at line {exc.lineno}" + (f": `{line}`" if line else "")
                    + f". Answer with one complete `def {selector}(self, ...)` and nothing else.")
        else:
            break
    return f"no function named {selector!r} in the answer; write `def {selector}(self, ...)` exactly"


def extract_function(answer: str, selector: str) -> str | None:
    """The source of the function named ``selector`` in a model's answer, or None.

    Looks in fenced blocks first, then the whole answer; accepts the function at the top level or
    as a method of a class (dedented).
    """
    for block in [*FENCE.findall(answer), answer, _without_open_fence(answer)]:
        try:
            tree = ast.parse(textwrap.dedent(block))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == selector:
                return ast.unparse(node) + "\n"
    return None


def _without_open_fence(answer: str) -> str:
    """An answer that opens a code fence and never closes it (cut off, or sloppy): its code."""
    stripped = answer.strip()
    if stripped.startswith("```") and stripped.count("```") == 1:
        return stripped.split("\n", 1)[1] if "\n" in stripped else ""
    return stripped
