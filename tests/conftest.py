"""Shared fixtures: temporary images and real `batos run` processes on free loopback ports."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import ormsgpack
import pytest
import transaction
import zmq

from batos.client import BridgeTimeout, Client
from batos.image import open_image

BATOS = [sys.executable, "-P", "-m", "batos"]  # -P: like the installed `batos`, never import from the cwd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `batos run` subprocess on its own image and port."""

    def __init__(self, image: Path, endpoint: str | None = None, extra_args: tuple[str, ...] = (), env: dict | None = None,
                 cwd: Path | None = None, python: str | None = None):
        self.cwd = cwd
        self.command = [python, *BATOS[1:]] if python else BATOS
        self.image = image
        self.endpoint = endpoint or f"tcp://127.0.0.1:{free_port()}"
        self.log_file = image.parent / "logs" / "batos.jsonl"
        self.extra_args = extra_args
        # Kernel tests run without a language model unless they ask for one.
        self.env = {**os.environ, "BATOS_LLM": "none", **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> Server:
        self.process = subprocess.Popen(
            [*self.command, "run", "--image", str(self.image), "--endpoint", self.endpoint,
             "--log-file", str(self.log_file), *self.extra_args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env, cwd=self.cwd,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with Client(self.endpoint, timeout=0.5) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"batos run exited {self.process.returncode}: {self.process.stderr.read()}")
                try:
                    client.ping()
                    return
                except BridgeTimeout:
                    continue
        raise RuntimeError("batos run did not answer ping in time")

    def client(self, timeout: float = 30.0) -> Client:
        return Client(self.endpoint, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        if code != 0 and self.process.stderr is not None:  # shown with the failing test's output
            print(f"batos run exited {code}; the end of its stderr:\n{self.process.stderr.read()[-4000:]}")
        return code

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


# `make test` runs two pytest workers (pytest-xdist). Each file stays on one worker, so the servers
# a module shares start once; every file that loads a real model goes to the same worker, so the
# model caches and the session's model fixtures are made once and two models never decode at the
# same time. (xdist's own `xdist_group` marks do nothing on pytest 9.2: its worker renames a node's
# `_nodeid`, which pytest 9.2 no longer reads, so each file was split over both workers and the
# standard model's quality fixture ran twice. Hence a scheduler of our own.)
MODEL_FIXTURES = ("model_cache", "standard_model_cache", "gguf_model_file", "plain_model_folder", "adapters")
TESTS = Path(__file__).parent


@functools.cache
def file_group(path: str) -> str:
    """The worker group of a test file: ``real-model`` if it names a model fixture, else the file."""
    text = (TESTS.parent / path).read_text() if (TESTS.parent / path).is_file() else ""
    return "real-model" if any(re.search(rf"\b{name}\b", text) for name in MODEL_FIXTURES) else path


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        """xdist's scope scheduling (largest groups first), with our groups as the scopes."""

        def _split_scope(self, nodeid: str) -> str:
            return file_group(nodeid.split("::", 1)[0])

    return ByGroup(config, log)


@pytest.fixture
def image_path(tmp_path: Path) -> Path:
    return tmp_path / "image.fs"


@pytest.fixture
def server(image_path: Path):
    srv = Server(image_path).start()
    yield srv
    srv.stop()
    for stream in (srv.process.stdout, srv.process.stderr):
        stream.close()


@pytest.fixture
def image(image_path: Path):
    """An opened image (no server) with a transaction manager of its own."""
    img = open_image(str(image_path))
    yield img
    img.close()


def run_cli(*args: str, timeout: float = 60.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*BATOS, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env} if env else None)


@contextlib.contextmanager
def opened_root(path):
    """The root of the image at ``path`` inside one transaction, committed unless it raises."""
    img = open_image(str(path))
    try:
        with in_transaction(img) as root:
            yield root
    finally:
        img.close()


@contextlib.contextmanager
def in_transaction(img):
    """The root of an already opened image inside one transaction, committed unless it raises."""
    session = Session(img.db)
    try:
        with session as root:
            yield root
    finally:
        session.close()


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet HTTP handler for test servers that answer JSON."""

    def answer(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_http(handler: type[BaseHTTPRequestHandler]):
    """``handler`` served on 127.0.0.1 in a thread; yields the base URL of its /v1 API."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def send_raw(endpoint: str, message: dict) -> zmq.Socket:
    """A DEALER socket that has sent ``message``; the caller closes it."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send(ormsgpack.packb(message))
    return sock


class Session:
    """One connection with an explicit transaction manager, for tests that read an image."""

    def __init__(self, db):
        self.manager = transaction.TransactionManager(explicit=True)
        self.connection = db.open(transaction_manager=self.manager)

    def __enter__(self):
        self.manager.begin()
        return self.connection.root()

    def __exit__(self, exc_type, *rest):
        if exc_type is None:
            self.manager.commit()
        else:
            self.manager.abort()

    def close(self):
        self.connection.close()


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """A cache holding the small model as the GGUF file llama.cpp serves (a few seconds). Tests
    that check plumbing run on it (``llm_env`` says BATOS_DEFAULT_MODEL=small)."""
    from batos.llm.default_model import GGUF_FORM, SMALL, default_model_folder

    cache = tmp_path_factory.mktemp("model-cache")
    default_model_folder(cache, GGUF_FORM, model=SMALL)
    return cache


@pytest.fixture(scope="session")
def standard_model_cache(model_cache) -> Path:
    """The same cache, also holding the standard model's GGUF file (for tests of answer quality)."""
    from batos.llm.default_model import GGUF_FORM, STANDARD, default_model_folder

    default_model_folder(model_cache, GGUF_FORM, model=STANDARD)
    return model_cache


@pytest.fixture(scope="session")
def gguf_model_file(model_cache) -> Path:
    from batos.llm.default_model import GGUF_FORM, GGUF_NAME, SMALL, default_model_folder

    return default_model_folder(model_cache, GGUF_FORM, model=SMALL) / GGUF_NAME


@pytest.fixture(scope="session")
def plain_model_folder(model_cache) -> Path:
    """The small model dequantized to a bfloat16 folder for transformers (~1 minute, once)."""
    from batos.llm.default_model import SMALL, default_model_folder

    return default_model_folder(model_cache, "bfloat16", model=SMALL)


@pytest.fixture(scope="session")
def adapters(tmp_path_factory, plain_model_folder) -> Path:
    """A staging folder with two small random LoRA adapters made with peft on the real model."""
    import gc

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    staging = tmp_path_factory.mktemp("lora_adapters")
    for seed, name in ((1, "BRICK"), (2, "ROBIN")):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(plain_model_folder, dtype=torch.bfloat16)
        config = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(base, config).save_pretrained(staging / name)
        del base
        gc.collect()
    return staging


def llm_env(model_cache: Path, **extra: str) -> dict[str, str]:
    return {"BATOS_LLM": "embedded", "BATOS_MODEL_CACHE": str(model_cache), "BATOS_DEFAULT_MODEL": "small", **extra}


# --- a scripted (test-only) OpenAI-compatible model server, for cycles through a real UVM --------

ADD = "def add_to_total(self, n):\n    self.total = self.total + n\n    self._p_changed = True\n    return self.total\n"
EXAMPLE = {"slots": {"total": 10}, "args": [5], "result": 15}


class ScriptedModel(JsonHandler):
    answers: list[str] = []
    requests: list[dict] = []
    delay = 0.0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ScriptedModel.requests.append(body)
        time.sleep(ScriptedModel.delay)
        text = ScriptedModel.answers.pop(0) if len(ScriptedModel.answers) > 1 else ScriptedModel.answers[0]
        self.answer(200, {"choices": [{"message": {"content": f"```python\n{text}```"}}]})


@pytest.fixture
def model_server():
    """A scripted model answering ADD (or ScriptedModel.answers, in order); its base URL."""
    ScriptedModel.answers, ScriptedModel.requests, ScriptedModel.delay = [ADD], [], 0.0
    with serve_http(ScriptedModel) as url:
        yield url


def uvm(image_path, url, endpoint=None, **env):
    return Server(image_path, endpoint=endpoint, env={"BATOS_LLM": "openai", "BATOS_OPENAI_BASE_URL": url,
                                                      "BATOS_OPENAI_MODEL": "scripted", **env})


def make_counter(image_path):
    with opened_root(image_path) as root:
        counter = root["genesis_obj"].clone()
        counter.name = "counter"
        counter.total = 10
        root["counter_obj"] = counter


# --- a scripted model for the mind: answers by what it is asked (plan, facet, reply, tie-break) ---

def mind_request_kind(body: dict) -> str:
    last = body["messages"][-1]["content"]
    if "Classify the question" in last:
        return "route"
    if "Reply with JSON only" in last or "JSON plan only" in last:
        return "plan"
    if "Your part of it:" in last:
        return "facet"
    if "Write `def " in last or "Write the corrected" in last:
        return "method"
    return "reply"


class ScriptedMind(JsonHandler):
    """Answers by kind: ``answers[kind]`` is a list used in order (its last item repeats); an int
    item is an HTTP error code. ``delays[kind]`` seconds before answering."""

    answers: dict[str, list] = {}
    requests: list[tuple[str, dict]] = []
    delays: dict[str, float] = {}

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        kind = mind_request_kind(body)
        ScriptedMind.requests.append((kind, body))
        time.sleep(ScriptedMind.delays.get(kind, 0.0))
        queue = ScriptedMind.answers.get(kind) or [f"A {kind} answer about the question, in several plain words."]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, int):
            return self.answer(answer, {"error": {"message": f"scripted failure {answer}"}})
        self.answer(200, {"choices": [{"message": {"content": answer}}]})


def kinds_asked() -> list[str]:
    return [kind for kind, _ in ScriptedMind.requests]


@pytest.fixture
def mind_server():
    """A scripted model for asks; set ScriptedMind.answers / delays in the test. Its base URL."""
    ScriptedMind.answers, ScriptedMind.requests, ScriptedMind.delays = {}, [], {}
    with serve_http(ScriptedMind) as url:
        yield url


class PingWatch:
    """Pings ``server`` every 50 ms on a thread of its own while inside; ``latencies`` are the
    round trips, in seconds."""

    def __init__(self, server: Server):
        self.server = server
        self.latencies: list[float] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        with self.server.client(timeout=5) as c:
            while not self._done.is_set():
                started = time.monotonic()
                c.ping()
                self.latencies.append(time.monotonic() - started)
                time.sleep(0.05)

    def __enter__(self) -> PingWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
