"""Loading the default model, three ways, and generating with it, measured in one run.

  (a) plain   transformers from_pretrained of a plain folder of safetensors
  (b) seeds   the seeds' way: the model kept as one tar in a blob; read it, write it out,
              extract it, then from_pretrained the extracted folder
  (c) batos   BatOS from its image on transformers: link the committed blob files into a folder,
              build the model on the meta device, map the weights in place with accelerate
  (d) gguf    BatOS from its image on llama.cpp (the default): map the GGUF blob's committed file

Each load runs in a fresh process (so peak RSS is its own); figures are medians of --repeats.
Loads (a)-(c) end with a usable transformers model, (d) with a llama.cpp context ready to decode.
Then tokens/s of `send pLLM_obj infer_` through a running UVM (llama.cpp) against the same engine
generating in-process on the same prompt, same greedy settings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

PROMPT = "Write a Python function that returns the n-th Fibonacci number."
NEW_TOKENS = 64


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(way: str, image: str, folder: str) -> None:
    """Load the model one way and print seconds and peak RSS as JSON."""
    import torch
    import transaction
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from batos.image import open_image
    from batos.llm.default_model import DEFAULT_MODEL
    from batos.llm.embedded import load_model
    from batos.llm.settings import LLMSettings

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp())
    try:
        if way == "plain":
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
            AutoTokenizer.from_pretrained(folder)
        else:
            img = open_image(image)
            manager = transaction.TransactionManager(explicit=True)
            conn = img.db.open(transaction_manager=manager)
            with manager:
                pllm = conn.root()["pLLM_obj"]
                if way == "gguf":
                    from batos.llm.llamacpp import LlamaCppBackend
                    model = LlamaCppBackend(pllm.model_bundles[DEFAULT_MODEL.name].files["model.gguf"].committed(),
                                            LLMSettings(llm_threads=2), "gguf")
                elif way == "seeds":
                    with pllm.seed_tar_blob.open("r") as blob_file, open(work / "model.tar", "wb") as copy:
                        shutil.copyfileobj(blob_file, copy)
                    with tarfile.open(work / "model.tar") as tar:
                        tar.extractall(work / "extracted", filter="data")
                    model = AutoModelForCausalLM.from_pretrained(work / "extracted" / "model", dtype=torch.bfloat16)
                    AutoTokenizer.from_pretrained(work / "extracted" / "model")
                else:
                    pllm.model_bundles[f"{DEFAULT_MODEL.name}-bfloat16"].link_into(work / "links")
                    model, _ = load_model(work / "links", LLMSettings(model_dtype="bfloat16"))
            conn.close()
            img.close()
        seconds = time.perf_counter() - started
        assert model is not None
        print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb()}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def prepare(workdir: Path) -> tuple[Path, Path]:
    """An image holding the default model as a bundle and, for the seeds' way, as one tar blob."""
    import transaction
    from ZODB.blob import Blob

    from batos.image import open_image
    from batos.image.blobs import import_folder
    from batos.llm.default_model import DEFAULT_MODEL, GGUF_FORM, default_model_folder
    from batos.llm.settings import LLMSettings

    folder = default_model_folder(LLMSettings().model_cache, "bfloat16")
    gguf = default_model_folder(LLMSettings().model_cache, GGUF_FORM)
    image = workdir / "image.fs"
    img = open_image(str(image))
    manager = transaction.TransactionManager(explicit=True)
    conn = img.db.open(transaction_manager=manager)
    with manager:
        pllm = conn.root()["pLLM_obj"]
        pllm.model_bundles[f"{DEFAULT_MODEL.name}-bfloat16"] = import_folder(folder, DEFAULT_MODEL.name, "bench")
        pllm.model_bundles[DEFAULT_MODEL.name] = import_folder(gguf, DEFAULT_MODEL.name, "bench")
        pllm.active_model = DEFAULT_MODEL.name
        with tarfile.open(workdir / "seed.tar", "w") as tar:
            tar.add(folder, arcname="model")
        blob = Blob()
        blob.consumeFile(str(workdir / "seed.tar"))
        pllm.seed_tar_blob = blob
    conn.close()
    img.close()
    return image, folder


def measure_load(way: str, image: Path, folder: Path, repeats: int) -> tuple[float, float]:
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, __file__, "--child", way, "--image", str(image), "--folder", str(folder)],
                             capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return statistics.median(r["seconds"] for r in runs), statistics.median(r["peak_rss_mb"] for r in runs)


def bare_tokens_per_second(folder: Path, repeats: int) -> tuple[float, str]:
    """llama.cpp generating in this process, as the UVM's engine does, on the same prompt."""
    from batos.llm.default_model import GGUF_FORM, GGUF_NAME, default_model_folder
    from batos.llm.generation import chat
    from batos.llm.llamacpp import LlamaCppBackend
    from batos.llm.settings import LLMSettings

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)  # counts tokens as infer_tokens_per_second does
    backend = LlamaCppBackend(default_model_folder(LLMSettings().model_cache, GGUF_FORM) / GGUF_NAME, LLMSettings(), "bare")
    backend.generate(chat("warm up"), max_new_tokens=4)
    rates, text = [], ""
    for _ in range(repeats):
        started = time.perf_counter()
        text = backend.generate(chat(PROMPT), max_new_tokens=NEW_TOKENS).text
        rates.append(len(tokenizer(text)["input_ids"]) / (time.perf_counter() - started))
    backend.close()
    return statistics.median(rates), text


def infer_tokens_per_second(image: Path, folder: Path, repeats: int) -> tuple[float, str]:
    from transformers import AutoTokenizer

    from conftest import Server

    tokenizer = AutoTokenizer.from_pretrained(folder)
    srv = Server(image, env={"BATOS_LLM": "embedded", "BATOS_LORA_STAGING": str(image.parent / "none")}).start()
    try:
        with srv.client(timeout=600) as c:
            c.send("pLLM_obj", "infer_", "warm up", max_new_tokens=4)
            rates, text = [], ""
            for _ in range(repeats):
                started = time.perf_counter()
                text = c.send("pLLM_obj", "infer_", PROMPT, max_new_tokens=NEW_TOKENS)
                seconds = time.perf_counter() - started
                rates.append(len(tokenizer(text)["input_ids"]) / seconds)
    finally:
        srv.stop()
    return statistics.median(rates), text


def fresh_display_yourself(engine: str, workdir: Path, repeats: int) -> float:
    """Median seconds from a fresh image's first ping to the answer of `send genesis_obj
    display_yourself` (default model imported and loaded, method written, verified, installed)."""
    from conftest import Server

    runs = []
    for attempt in range(repeats):
        image = workdir / f"fresh-{engine}-{attempt}" / "image.fs"
        image.parent.mkdir(parents=True)
        srv = Server(image, env={"BATOS_LLM": "embedded", "BATOS_ENGINE": engine,
                                 "BATOS_LORA_STAGING": str(image.parent / "none")}).start()
        try:
            with srv.client(timeout=900) as c:
                started = time.perf_counter()
                c.send("genesis_obj", "display_yourself")
                runs.append(time.perf_counter() - started)
        finally:
            srv.stop()
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["plain", "seeds", "batos", "gguf"], help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.image, args.folder)
    workdir = Path(tempfile.mkdtemp(prefix="batos-awaken-"))
    try:
        image, folder = prepare(workdir)
        loads = {way: measure_load(way, image, folder, args.repeats) for way in ("plain", "seeds", "batos", "gguf")}
        print(f"cores: {os.cpu_count()}  repeats: {args.repeats}  medians")
        print(f"{'load':<8} {'seconds':>8} {'peak RSS MB':>12}")
        for way, (seconds, rss) in loads.items():
            print(f"{way:<8} {seconds:>8.2f} {rss:>12.0f}")
        (a, a_rss), (b, b_rss), (c, c_rss), (d, d_rss) = loads["plain"], loads["seeds"], loads["batos"], loads["gguf"]
        print(f"(c)/(a) time {c / a:.2f}  RSS {c_rss / a_rss:.2f}    (c)/(b) time {c / b:.2f}  RSS {c_rss / b_rss:.2f}"
              f"    (d)/(c) time {d / c:.2f}  RSS {d_rss / c_rss:.2f}")
        bare, bare_text = bare_tokens_per_second(folder, args.repeats)
        served, served_text = infer_tokens_per_second(image, folder, args.repeats)
        fresh = {engine: fresh_display_yourself(engine, workdir, args.repeats) for engine in ("llama.cpp", "transformers")}
        print(f"fresh image, send genesis_obj display_yourself: llama.cpp {fresh['llama.cpp']:.1f} s, "
              f"transformers bf16 {fresh['transformers']:.1f} s, {fresh['transformers'] / fresh['llama.cpp']:.2f}x sooner")
        print(f"generation on llama.cpp, {NEW_TOKENS} new tokens, greedy: in-process {bare:.2f} tok/s, "
              f"infer_ through the UVM {served:.2f} tok/s, ratio {served / bare:.2f}"
              f"{'' if served_text.strip() == bare_text.strip() else '  (texts differ!)'}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
