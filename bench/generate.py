"""Generation engines side by side: the default model on llama.cpp, transformers bf16 and fp32.

Each engine runs in a fresh process of its own (so load time and RSS are its own), with the same
prompts and the same number of threads, greedy:

  prefill   a method-synthesis prompt (the covenant prompt), one new token: prompt tokens/s
  decode    a long answer (200 new tokens) minus the prefill-only run of the same prompt: tokens/s
  batch     three different prompts, 64 new tokens each: one batched call against three calls in
            a row, as tokens/s of each (the answers are checked to be the same text)
  expert    decode tokens/s of the long answer with a LoRA expert applied (a random peft adapter
            of rank 8 on q_proj and v_proj, made in this run; llama.cpp gets it as a GGUF LoRA)

The machine's memory bandwidth is measured in the same run with a numpy copy of a buffer the size
of the GGUF model; since decoding one token reads every weight once, bandwidth / weight bytes is
the most tokens/s an engine can decode, and each engine's decode rate is printed against it.
Figures are medians of --repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engines import ENGINES, make_backend, model_file  # noqa: E402

LONG = "Explain in detail how a hash table works, how collisions are handled, and give a short Python example."
BATCH = ("Write a Python function that checks whether a string is a palindrome, with a docstring and examples.",
         "Describe the water cycle in a paragraph for a ten-year-old.",
         "List five tips for writing readable code, one sentence each.")


def synthesis_prompt() -> list[dict]:
    """The covenant prompt the cognitive cycle sends for the first spec of bench/synthesis.py."""
    from batos.mind.synthesis import build_messages
    from synthesis import SUITE, brief_for

    return build_messages(brief_for(SUITE[0]), [])


def process_memory() -> dict[str, float]:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: int(status[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def weight_bytes(backend) -> int:
    if backend.engine == "llama.cpp":
        return Path(backend.model_file).stat().st_size
    return sum(p.numel() * p.element_size() for p in backend.model.parameters())


def timed(backend, messages, new_tokens: int):
    if hasattr(backend, "forget_prompts"):
        backend.forget_prompts()  # measure decoding the whole prompt, not the prompt cache
    started = time.perf_counter()
    generation = backend.generate(messages, max_new_tokens=new_tokens)
    return generation, time.perf_counter() - started


def make_adapter(folder: Path) -> Path:
    """A random peft LoRA adapter for the default model, saved in ``folder``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from batos.llm.default_model import default_model_folder
    from batos.llm.settings import LLMSettings

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(default_model_folder(LLMSettings().model_cache, "bfloat16"),
                                                dtype=torch.bfloat16)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(folder)
    return folder


def know_adapter(backend, adapter: Path, workdir: Path) -> None:
    from batos.image.blobs import ADAPTER_CONFIG, ADAPTER_WEIGHTS

    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    weights = adapter / ADAPTER_WEIGHTS
    if backend.engine == "llama.cpp":
        from batos.llm.lora_gguf import convert_lora

        weights = convert_lora(config, weights, backend.model_file, workdir / "adapter.gguf")
    backend.know_expert("BENCH", config, weights, weights.stat().st_size)


def expert_decode(backend, messages) -> float:
    generation, seconds = timed_expert(backend, messages, 200)
    one, one_seconds = timed_expert(backend, messages, 1)
    return (generation.completion_tokens - 1) / (seconds - one_seconds)


def timed_expert(backend, messages, new_tokens: int):
    if hasattr(backend, "forget_prompts"):
        backend.forget_prompts()
    started = time.perf_counter()
    generation = backend.generate(messages, max_new_tokens=new_tokens, expert="BENCH")
    return generation, time.perf_counter() - started


def child(engine: str, repeats: int, threads: int, adapter: str | None) -> None:
    import tempfile

    from batos.llm.generation import chat

    started = time.perf_counter()
    backend = make_backend(engine, threads)
    load_seconds = time.perf_counter() - started
    loaded = process_memory()
    expert = []
    if adapter:
        know_adapter(backend, Path(adapter), Path(tempfile.mkdtemp()))
        timed_expert(backend, chat(LONG), 4)  # warm up: the adapter becomes hot
        expert = [expert_decode(backend, chat(LONG)) for _ in range(repeats)]
    prompt = synthesis_prompt()
    timed(backend, prompt, 8)  # warm up (first touches of mapped pages)
    prefill, decode, batch_ratio, sequential_rate, batched_rate = [], [], [], [], []
    same_texts = True
    for _ in range(repeats):
        first, first_seconds = timed(backend, chat(LONG), 1)
        long, long_seconds = timed(backend, chat(LONG), 200)
        decode.append((long.completion_tokens - 1) / (long_seconds - first_seconds))
        only_prompt, prompt_seconds = timed(backend, prompt, 1)
        prefill.append(only_prompt.prompt_tokens / prompt_seconds)
        conversations = [chat(q) for q in BATCH]
        if hasattr(backend, "forget_prompts"):
            backend.forget_prompts()
        t = time.perf_counter()
        one_by_one = [backend.generate(c, max_new_tokens=64) for c in conversations]
        sequential = time.perf_counter() - t
        if hasattr(backend, "forget_prompts"):
            backend.forget_prompts()
        t = time.perf_counter()
        together = backend.generate_many(conversations, max_new_tokens=64)
        batched = time.perf_counter() - t
        same_texts &= [g.text for g in together] == [g.text for g in one_by_one]
        tokens = sum(g.completion_tokens for g in together)
        sequential_rate.append(sum(g.completion_tokens for g in one_by_one) / sequential)
        batched_rate.append(tokens / batched)
        batch_ratio.append(batched_rate[-1] / sequential_rate[-1])
    print(json.dumps({
        "engine": engine, "load_seconds": load_seconds, "rss_loaded_mb": loaded["VmRSS"],
        "peak_rss_mb": process_memory()["VmHWM"], "weight_bytes": weight_bytes(backend),
        "prompt_tokens": only_prompt.prompt_tokens, "long_tokens": long.completion_tokens,
        "prefill": statistics.median(prefill), "decode": statistics.median(decode),
        "sequential": statistics.median(sequential_rate), "batched": statistics.median(batched_rate),
        "batch_ratio": statistics.median(batch_ratio), "batch_same_texts": same_texts,
        "expert_decode": statistics.median(expert) if expert else None,
    }))


def memory_bandwidth(size: int, repeats: int = 7) -> float:
    """Bytes per second moved by a plain numpy copy (each byte read once and written once)."""
    import numpy as np

    source = np.ones(size // 8, dtype=np.float64)
    target = np.empty_like(source)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(target, source)
        times.append(time.perf_counter() - started)
    return 2 * source.nbytes / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}")
    parser.add_argument("--no-expert", action="store_true", help="skip the expert measurement (no peft adapter made)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--adapter", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.repeats, args.threads, args.adapter)
    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines: {', '.join(sorted(unknown))}")
    import tempfile

    adapter = None if args.no_expert else make_adapter(Path(tempfile.mkdtemp(prefix="batos-bench-lora-")))
    results = {}
    for engine in engines:
        out = subprocess.run([sys.executable, __file__, "--child", engine, "--repeats", str(args.repeats),
                              "--threads", str(args.threads), *(["--adapter", str(adapter)] if adapter else [])],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{engine} failed:\n{out.stderr[-3000:]}")
        results[engine] = json.loads(out.stdout.strip().splitlines()[-1])
    bandwidth = memory_bandwidth(model_file().stat().st_size)
    print(f"cores: {os.cpu_count()}  threads: {args.threads}  repeats: {args.repeats}  medians")
    print(f"memory bandwidth (numpy copy of {model_file().stat().st_size / 2**20:.0f} MiB): {bandwidth / 1e9:.1f} GB/s")
    print(f"{'engine':<10} {'load s':>7} {'RSS MB':>7} {'peak MB':>8} {'prefill t/s':>12} {'decode t/s':>11} "
          f"{'limit t/s':>10} {'decode/limit':>13} {'3 in a row':>11} {'3 batched':>10} {'batch x':>8} {'expert t/s':>11}")
    for engine, r in results.items():
        limit = bandwidth / r["weight_bytes"]
        print(f"{engine:<10} {r['load_seconds']:>7.2f} {r['rss_loaded_mb']:>7.0f} {r['peak_rss_mb']:>8.0f} "
              f"{r['prefill']:>12.1f} {r['decode']:>11.1f} {limit:>10.1f} {r['decode'] / limit:>13.2f} "
              f"{r['sequential']:>11.1f} {r['batched']:>10.1f} {r['batch_ratio']:>8.2f} "
              f"{r['expert_decode'] or 0:>11.1f}{'' if r['batch_same_texts'] else '  (batched texts differ!)'}")
    if "llama.cpp" in results and "bfloat16" in results:
        fast, base = results["llama.cpp"], results["bfloat16"]
        print(f"llama.cpp / transformers bf16: prefill {fast['prefill'] / base['prefill']:.2f}x, "
              f"decode {fast['decode'] / base['decode']:.2f}x, load {base['load_seconds'] / fast['load_seconds']:.2f}x faster")
    print(f"(prompt: {next(iter(results.values()))['prompt_tokens']} tokens; long answer: "
          f"{next(iter(results.values()))['long_tokens']} tokens)")


if __name__ == "__main__":
    main()
