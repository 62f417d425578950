"""Fractal Memory's figures (issue 11); medians, with a baseline measured in the same run.

(a) ingestion: chunks/s of MemoryService.ingest over Markdown files, against bare batched
    embedding of exactly the same chunk texts (the ratio is the cost of extraction, chunking,
    indexing and committing on top of the embedding); and parsing alone, per document, in this
    process against the confined child that ingestion parses in.
(b) search latency p50/p99 at 10k and 100k chunks, lexical, vector and hybrid. The scale
    catalogs hold synthetic text (a 5,000-word vocabulary, Zipf-distributed) and synthetic unit
    vectors (clustered), written in batches of 1,000 chunks per transaction: search cost does not
    depend on what the vectors mean. The query embedding is included in vector and hybrid times.
(d) image size per 10k chunks (FileStorage file plus blob folder).
(c) retrieval quality on the two labelled sets (tests/retrieval_set.py): recall@5 and MRR@10 per
    mode, over the stdlib set and each of its kinds (plain questions, identifiers), and over the
    packages set's tune and held-out parts.
(e) the message path during ingestion: ``get`` round trips to a real UVM while another client
    ingests, against the same round trips idle.
(f) the ANN graph against exact search on real embeddings of ~15,000 docstring paragraphs.

Run: .venv/bin/python bench/memory.py [--parts ingest,search,quality,path,ann] [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import transaction  # noqa: E402
import ZODB  # noqa: E402

from batos.image.genesis import open_image  # noqa: E402
from batos.memory.parsing import parse  # noqa: E402
from batos.llm.embeddings import Embedder  # noqa: E402
from batos.memory.catalog import KNOWLEDGE_CATALOG, ROOT_KEY  # noqa: E402
from batos.memory.chunking import Chunk, chunk_text  # noqa: E402
from batos.memory.extract import extract  # noqa: E402
from batos.memory.search import VectorIndex  # noqa: E402
from batos.memory.service import MemoryService  # noqa: E402
from retrieval_set import (KINDS, PARTS, evaluate, package_questions, write_documents,  # noqa: E402
                           write_package_documents)

QUERIES = ["how are replies routed back to clients", "blob storage of model weights", "kill during a commit",
           "summary of the knowledge weaver", "retry with exponential backoff", "lexical index okapi",
           "vector search latency", "persona dialogue routing", "sandbox worker process", "pack the image"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def open_db(folder: str) -> ZODB.DB:
    """An image in ``folder`` opened as the UVM opens one (its storage, blob folder and caches)."""
    return open_image(os.path.join(folder, "image.fs"), furnishings=(KNOWLEDGE_CATALOG,)).db


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def ingest_figures(embedder: Embedder, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as work:
        paths = write_documents(Path(work) / "docs")
        files = [(str(p), p.read_bytes()) for p in paths.values()]
        texts = [c.headed_text() for _, data in files for c in chunk_text(extract("x.md", data).text)]
        bare, full = [], []
        for repeat in range(repeats):
            started = time.perf_counter()
            for start in range(0, len(texts), embedder.batch_size * 4):
                embedder.encode(texts[start:start + embedder.batch_size * 4])
            bare.append(len(texts) / (time.perf_counter() - started))
            folder = os.path.join(work, f"image{repeat}")
            os.mkdir(folder)
            db = open_db(folder)
            memory = MemoryService(db, embedder)
            started = time.perf_counter()
            for source, data in files:
                memory.ingest(source, data)
            full.append(memory.embedded_chunks / (time.perf_counter() - started))
            memory.close()
            db.close()
        here, confined = [], []
        for source, data in files:  # parsing alone: in this process against a confined child
            started = time.perf_counter()
            chunk_text(extract(source, data).text)
            here.append(time.perf_counter() - started)
            started = time.perf_counter()
            parse(source, data, 20 * 1024**2, 200, 40)
            confined.append(time.perf_counter() - started)
    return {"documents": len(files), "chunks": len(texts), "bare_embedding_chunks_per_s": round(statistics.median(bare), 1),
            "ingest_chunks_per_s": round(statistics.median(full), 1),
            "ratio": round(statistics.median(full) / statistics.median(bare), 3),
            "parse_ms_per_document_in_process": round(statistics.median(here) * 1000, 2),
            "parse_ms_per_document_confined_child": round(statistics.median(confined) * 1000, 2)}


def synthetic_catalog(folder: str, size: int, seed: int = 0) -> ZODB.DB:
    rng = np.random.default_rng(seed)
    vocabulary = [f"w{n}" for n in range(5000)]
    weights = 1.0 / np.arange(1, len(vocabulary) + 1)
    weights /= weights.sum()
    centres = rng.standard_normal((256, 384)).astype(np.float32)
    db = open_db(folder)
    per_document = 1000
    for first in range(0, size, per_document):
        count = min(per_document, size - first)
        words = rng.choice(len(vocabulary), size=(count, 60), p=weights)
        chunks = [Chunk(" ".join(vocabulary[w] for w in row), "", 0, "prose") for row in words]
        vectors = centres[rng.integers(0, len(centres), count)] + rng.standard_normal((count, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        with db.transaction() as connection:
            connection.root()[ROOT_KEY].add(f"/synthetic/{first}.md", str(first), "markdown", 0, chunks, vectors)
    return db


def search_figures(embedder: Embedder, sizes: list[int], queries_per_mode: int) -> list[dict]:
    rows = []
    rng = random.Random(0)
    for size in sizes:
        with tempfile.TemporaryDirectory() as work:
            started = time.perf_counter()
            db = synthetic_catalog(work, size)
            built = time.perf_counter() - started
            image_bytes = folder_bytes(work)
            memory = MemoryService(db, embedder)
            memory.search("warm up", 5, "hybrid")  # reads the vector blobs once
            vocabulary_queries = [" ".join(f"w{rng.randint(0, 400)}" for _ in range(4)) for _ in range(queries_per_mode // 2)]
            queries = [*QUERIES * (queries_per_mode // (2 * len(QUERIES)) + 1)][:queries_per_mode // 2] + vocabulary_queries
            row = {"chunks": size, "build_seconds": round(built, 1),
                   "image_mb_per_10k_chunks": round(image_bytes / 1024**2 / (size / 10_000), 2),
                   "vector_search": memory.vectors.method}
            for mode in ("lexical", "vector", "hybrid"):
                times = []
                for query in queries:
                    t = time.perf_counter()
                    memory.search(query, 5, mode)
                    times.append((time.perf_counter() - t) * 1000)
                half = len(queries) - len(vocabulary_queries)
                row[mode] = {"p50_ms": round(percentile(times, 0.5), 2), "p99_ms": round(percentile(times, 0.99), 2),
                             "p50_ms_questions": round(percentile(times[:half], 0.5), 2),
                             "p50_ms_vocabulary": round(percentile(times[half:], 0.5), 2)}
            memory.close()
            db.close()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def quality_figures(embedder: Embedder) -> dict:
    figures = {}
    with tempfile.TemporaryDirectory() as work:
        for label, writer in (("stdlib", write_documents), ("packages", write_package_documents)):
            paths = writer(Path(work) / label)
            db = open_db(os.path.join(work, label))
            memory = MemoryService(db, embedder)
            for path in paths.values():
                memory.ingest(str(path), path.read_bytes())
            search = lambda q, mode: memory.search(q, 30, mode)  # noqa: E731
            if label == "stdlib":
                groups = {kind or "all": evaluate(search, paths, kind) for kind in (None, *KINDS)}
            else:
                groups = {part: evaluate(search, paths, items=package_questions(part)) for part in PARTS}
            figures[label] = {group: {mode: {k: round(v, 3) for k, v in s.items()} for mode, s in scores.items()}
                              for group, scores in groups.items()}
            memory.close()
            db.close()
    return figures


def message_path_figures(seconds: float) -> dict:
    """``get`` round trips to a real UVM, idle and while another client ingests the labelled set's
    documents: the message path must not wait for ingestion."""
    import threading

    from conftest import Server

    with tempfile.TemporaryDirectory() as work:
        paths = write_documents(Path(work) / "docs")
        server = Server(Path(work) / "image.fs").start()
        try:
            with server.client(timeout=600) as client:
                client.memory_search("warm up", k=1)  # the embedding model, loaded once

                def round_trips() -> list[float]:
                    times: list[float] = []
                    end = time.perf_counter() + seconds
                    while time.perf_counter() < end:
                        t = time.perf_counter()
                        client.get("genesis_obj", "name")
                        times.append((time.perf_counter() - t) * 1000)
                    return times

                round_trips()  # warm up
                idle = round_trips()
                with server.client(timeout=600) as ingesting:
                    worker = threading.Thread(target=ingesting.memory_ingest, args=([Path(work) / "docs"],))
                    worker.start()
                    time.sleep(1.0)  # the upload is under way and embedding has begun
                    busy = round_trips()
                    still_ingesting = worker.is_alive()
                    worker.join()
        finally:
            server.stop()
    return {"documents": len(paths), "round_trips": len(busy), "idle_p50_ms": round(statistics.median(idle), 2),
            "idle_p99_ms": round(percentile(idle, 0.99), 2), "ingesting_p50_ms": round(statistics.median(busy), 2),
            "ingesting_p99_ms": round(percentile(busy, 0.99), 2),
            "ratio_p50": round(statistics.median(busy) / statistics.median(idle), 2),
            "ingestion_still_running_at_the_end": still_ingesting}


def docstring_paragraphs() -> list[str]:
    """Real prose, gathered on this machine: the docstring paragraphs of the standard library's
    modules' and a few installed packages' public names."""
    import importlib
    import inspect

    skipped = {"antigravity", "this", "idlelib", "turtledemo", "tkinter", "turtle"}
    names = sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in skipped)
    texts: set[str] = set()
    for name in [*names, "numpy", "torch", "transformers", "ZODB", "zmq", "BTrees", "pydantic"]:
        try:
            module = importlib.import_module(name)
        except BaseException:  # a module that cannot be imported here is left out
            continue
        for attribute in dir(module):
            value = getattr(module, attribute, None)
            doc = inspect.getdoc(value) if callable(value) else None
            for paragraph in (doc or "").split("\n\n"):
                paragraph = " ".join(paragraph.split())
                if 60 <= len(paragraph) <= 800:
                    texts.add(paragraph)
    return sorted(texts)


def ann_figures(embedder: Embedder, queries: int = 200) -> dict:
    """The usearch graph against exact search on real MiniLM embeddings of real paragraphs:
    recall@10 (of the exact top 10, how many the graph returns) and p50 latency."""
    texts = docstring_paragraphs()
    random.Random(0).shuffle(texts)
    held_out, indexed = texts[:queries], texts[queries:]
    vectors = np.concatenate([embedder.encode(indexed[i:i + 256]) for i in range(0, len(indexed), 256)])
    ids = np.arange(len(indexed))
    exact, graph = VectorIndex(), VectorIndex(exact_limit=0)
    started = time.perf_counter()
    graph.refresh(1, lambda: (ids, vectors))
    built = time.perf_counter() - started
    exact.refresh(1, lambda: (ids, vectors))
    recall, exact_ms, graph_ms = [], [], []
    for query in embedder.encode(held_out):
        t = time.perf_counter()
        truth = {i for i, _ in exact.search(query, 10)}
        exact_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        found = {i for i, _ in graph.search(query, 10)}
        graph_ms.append((time.perf_counter() - t) * 1000)
        recall.append(len(truth & found) / 10)
    return {"vectors": len(indexed), "queries": len(held_out), "graph_build_seconds": round(built, 1),
            "recall@10": round(statistics.mean(recall), 3), "worst_recall@10": min(recall),
            "exact_p50_ms": round(statistics.median(exact_ms), 2), "graph_p50_ms": round(statistics.median(graph_ms), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="ingest,search,quality,path,ann")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--queries", type=int, default=200, help="queries per mode and size")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    embedder = Embedder()
    embedder.load()
    embedder.encode(["warm up"])
    figures = {}
    if "ingest" in parts:
        figures["ingest"] = ingest_figures(embedder, args.repeats)
        print(json.dumps({"ingest": figures["ingest"]}), flush=True)
    if "quality" in parts:
        figures["quality"] = quality_figures(embedder)
        print(json.dumps({"quality": figures["quality"]}), flush=True)
    if "search" in parts:
        figures["search"] = search_figures(embedder, [int(s) for s in args.sizes.split(",")], args.queries)
    if "ann" in parts:
        figures["ann"] = ann_figures(embedder)
        print(json.dumps({"ann": figures["ann"]}), flush=True)
    if "path" in parts:
        figures["path"] = message_path_figures(seconds=5.0)
        print(json.dumps({"path": figures["path"]}), flush=True)
    transaction.abort()
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
