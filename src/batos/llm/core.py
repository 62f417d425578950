"""The cognitive core: which model the image holds, loading it, and serving generations.

At start it runs in the background: adapters staged in ``lora_adapters/`` are imported; an image
with no model gets the default one (converted once into a cache, then imported in one
transaction, so a crash leaves either the whole bundle or none); the active bundle is loaded from
the committed blob files in place. Calls that need the model wait until it is ready. The core has
its own connection and transaction manager; no transaction is open while a model runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import transaction
import ZODB

from batos.errors import BatosError
from batos.sandbox.unpacking import safe_extract
from batos.image.blobs import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, BundleError, adapter_record, blob_from_file,
                               import_folder, scan_folder)
from batos.image.transactions import run_in_transaction
from batos.llm import catalog
from batos.llm.default_model import (GGUF_FORM, GGUF_NAME, ShippedModel, convert_gguf, default_model_folder,
                                     shipped_form, shipped_model)
from batos.llm.generation import ConfigurationError, Generation, Stream, chat
from batos.llm.settings import LLMSettings

log = logging.getLogger(__name__)

BACKENDS = ("embedded", "openai", "none")
Listener = Callable[[dict[str, Any]], None]


class ModelUnavailable(BatosError):
    """No model can answer: the backend is off, still loading, or loading failed (the message says why)."""

    code = "model_unavailable"


class CognitiveCore:
    """See module docstring."""

    @staticmethod
    def check(backend: str, settings: LLMSettings) -> None:
        """ConfigurationError for settings that cannot work, before anything is opened or loaded."""
        if backend not in BACKENDS:
            raise ConfigurationError(f"BATOS_LLM must be one of {', '.join(BACKENDS)}, not {backend!r}")
        settings.validate()
        if backend == "embedded":
            import torch

            from batos.llm.quantization import quantization_config
            quantization_config(settings, torch.cuda.is_available())
            if settings.engine == "llama.cpp" and not llama_cpp_available():
                raise ConfigurationError("BATOS_ENGINE=llama.cpp, but llama-cpp-python is not installed (`make install`)")
        if backend == "openai" and not settings.openai_model:
            raise ConfigurationError("BATOS_LLM=openai needs BATOS_OPENAI_MODEL (the server's model name)")

    def __init__(self, db: ZODB.DB, backend: str, settings: LLMSettings, scratch: str | os.PathLike):
        self.check(backend, settings)
        self.db = db
        self.kind = backend
        self.settings = settings
        self.scratch = Path(scratch)
        self.backend = None
        self.state = "off" if backend == "none" else "starting"
        self.error: str | None = None
        self.progress: dict[str, Any] = {}
        self._listeners: list[Listener] = []
        self._ready = threading.Event()
        self._link_folder: Path | None = None
        self._manager = transaction.TransactionManager(explicit=True)
        self._connection = db.open(transaction_manager=self._manager)
        self._db_lock = threading.Lock()

    # --- lifecycle ---------------------------------------------------------------------------

    def awaken(self) -> None:
        """Load the active model (importing the default one if missing), then import staged experts
        (blocking; run in a thread)."""
        if self.kind == "none":
            return
        try:
            if self.kind == "openai":
                from batos.llm.openai_http import OpenAIBackend
                self.backend = OpenAIBackend(self.settings, self._expert_prompts())
            else:
                name = self._model_to_load()
                self._load(name)
                self.import_staged_experts()
            self._set_state("ready")
        except Exception as exc:
            log.exception("the language model could not be made ready")
            self.error = f"{type(exc).__name__}: {exc}"
            self._set_state("failed")
        finally:
            self._ready.set()

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        if self._link_folder is not None:
            shutil.rmtree(self._link_folder, ignore_errors=True)
        with contextlib.suppress(Exception):
            self._connection.close()

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _set_state(self, state: str) -> None:
        self.state = state
        log.info("language model: %s", state if not self.error else f"{state} ({self.error})")
        self._notify({"state": state})

    def _report(self, what: str, done: int, total: int) -> None:
        previous = self.progress
        self.progress = {"what": what, "done": done, "total": total}
        percent = int(100 * done / total) if total else 100
        if previous.get("what") != what or int(100 * previous.get("done", 0) / max(previous.get("total", 1), 1)) // 10 != percent // 10:
            log.info("%s: %d%%", what, percent)
        self._notify({"progress": self.progress})

    def _notify(self, event: dict[str, Any]) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("a language-model listener failed on %s", event)

    def _in_pllm(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(pLLM_obj)`` in one committed transaction of the core's connection; conflicts retried."""
        with self._db_lock:
            return run_in_transaction(self._manager, lambda: fn(catalog.pllm_of(self._connection.root())))

    # --- models --------------------------------------------------------------------------------

    def _active_model(self) -> str | None:
        return self._in_pllm(catalog.active_model)

    def default_engine(self) -> str:
        """The engine the default model is served by: llama.cpp unless told otherwise or missing."""
        if self.settings.engine == "transformers" or not llama_cpp_available():
            return "transformers"
        return "llama.cpp"

    def shipped_default(self) -> ShippedModel:
        """The shipped model an image runs unless a person chose another (BATOS_DEFAULT_MODEL)."""
        return shipped_model(self.settings.default_model)

    def _default_form(self) -> str:
        return GGUF_FORM if self.default_engine() == "llama.cpp" else self.settings.model_dtype

    def _model_to_load(self) -> str:
        """The active model if a person chose it or it is not a shipped one; otherwise the shipped
        default in the form its engine serves, imported beside what is there on first need."""
        active = self._active_model()
        chosen = self._in_pllm(catalog.active_model_chosen)
        if active is not None and (chosen or shipped_form(active) is None):
            return active
        model = self.shipped_default()
        wanted = model.form_name(self._default_form())
        if active == wanted:
            return active
        if self._in_pllm(lambda pllm: wanted in pllm.model_bundles):
            self._in_pllm(lambda pllm: catalog.set_active(pllm, wanted))
        else:
            self._import_shipped_model(model, wanted)
        if active is not None:
            log.info("the shipped default is now %s (%s): it replaces %s as the active model; %s stays in the image",
                     wanted, self.default_why(), active, active)
        return wanted

    def default_why(self) -> str:
        """Which shipped model is the default and why, in words for ``stats``."""
        model = self.shipped_default()
        if model.key == "standard":
            return f"{model.title}: the standard model (BATOS_DEFAULT_MODEL=small runs a quicker, weaker 0.5B one)"
        return f"{model.title}: BATOS_DEFAULT_MODEL={model.key}"

    def _import_shipped_model(self, model: ShippedModel, name: str) -> None:
        self._set_state("importing")
        folder = default_model_folder(self.settings.model_cache, self._default_form(), self._report, model)
        scan = scan_folder(folder, name, self._report)
        self._in_pllm(lambda pllm: catalog.add_bundle(pllm, import_folder(folder, name, model.source, scan=scan),
                                                      activate=True))

    def _load(self, name: str) -> None:
        self._set_state("loading")
        gguf = self._in_pllm(lambda pllm: catalog.gguf_file(pllm, name))
        folder = None
        if gguf is not None:
            backend = self._load_gguf(name, gguf)
        else:
            folder = Path(tempfile.mkdtemp(prefix="model-", dir=self._scratch_dir()))
            backend = self._load_folder(name, folder)
        old, old_folder = self.backend, self._link_folder
        self.backend, self._link_folder = backend, folder
        if old is not None:
            old.close()
        if old_folder is not None:
            shutil.rmtree(old_folder, ignore_errors=True)

    def _load_gguf(self, name: str, model_file: str):
        from batos.llm.llamacpp import LlamaCppBackend

        if self.settings.engine == "transformers":
            raise ConfigurationError(f"model {name!r} is a GGUF file, which BATOS_ENGINE=transformers does not serve; "
                                     "set BATOS_ENGINE=auto or `batos model use` a model folder")
        if not llama_cpp_available():
            raise ConfigurationError(f"model {name!r} is a GGUF file and llama-cpp-python is not installed")
        why = ("the model is a GGUF file: llama.cpp maps its quantized weights from the image's blob "
               f"file as they are; threads: {self.settings.threads_reason()}")
        backend = LlamaCppBackend(model_file, self.settings, name, why)
        ready, missing = self._in_pllm(lambda pllm: catalog.gguf_experts(pllm, name))
        for expert, config, weights in missing:  # imported for another model, or before llama.cpp
            try:
                ready.append(self._convert_expert(expert, config, weights, name, model_file))
            except BundleError as exc:
                log.error("expert %s cannot be used with %s: %s", expert, name, exc)
        for expert in ready:
            backend.know_expert(*expert)
        return backend

    def _load_folder(self, name: str, folder: Path):
        from batos.llm.embedded import EmbeddedBackend

        if self.settings.engine == "llama.cpp":
            raise ConfigurationError(f"model {name!r} is a model folder, which BATOS_ENGINE=llama.cpp does not serve; "
                                     "set BATOS_ENGINE=auto or `batos model use` a GGUF model")
        def linked(pllm):
            catalog.link_bundle(pllm, name, folder)
            return catalog.experts(pllm)
        experts = self._in_pllm(linked)
        why = (f"the model is a folder of weights: transformers maps them in {self.settings.model_dtype} "
               f"(BATOS_MODEL_DTYPE); threads: {self.settings.threads_reason()}")
        backend = EmbeddedBackend(folder, self.settings, name, why)
        for expert in experts:
            backend.know_expert(*expert)
        return backend

    def _convert_expert(self, expert: str, config: dict, weights: str, model: str, model_file: str) -> tuple:
        """Convert a stored expert to a GGUF LoRA for ``model`` and keep it in the image beside the original."""
        with self._lora_work() as work:
            self._in_pllm(lambda pllm: self._add_gguf_lora(pllm, expert, config, weights, model, model_file, work))
        ready, _ = self._in_pllm(lambda pllm: catalog.gguf_experts(pllm, model))
        return next(entry for entry in ready if entry[0] == expert)

    @staticmethod
    def _add_gguf_lora(pllm, expert: str, config: dict, weights, model: str, model_file: str, work: Path) -> None:
        """Inside the caller's transaction: convert the adapter and store its GGUF LoRA form
        (BundleError, and so nothing stored, for an adapter llama.cpp cannot apply)."""
        from batos.llm.lora_gguf import convert_lora

        converted = convert_lora(config, weights, model_file, work / "adapter.gguf")
        catalog.add_gguf_lora(pllm, expert, model, blob_from_file(converted, keep_source=True))

    @contextlib.contextmanager
    def _lora_work(self) -> Iterator[Path]:
        work = Path(tempfile.mkdtemp(prefix="lora-", dir=self._scratch_dir()))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _scratch_dir(self) -> Path:
        self.scratch.mkdir(parents=True, exist_ok=True)
        return self.scratch

    def list_models(self) -> dict[str, Any]:
        return self._in_pllm(catalog.listing)

    def use_model(self, name: str) -> dict[str, Any]:
        """Make bundle ``name`` the active model and load it (blocking)."""
        if self.kind != "embedded":
            raise ModelUnavailable(f"model bundles are used by the embedded backend; this UVM runs {self.kind!r}")
        previous, was_chosen = self._in_pllm(lambda pllm: catalog.activate(pllm, name))
        try:
            self._load(name)
        except Exception:
            self._in_pllm(lambda pllm: catalog.set_active(pllm, previous, was_chosen))
            raise
        self._set_state("ready")
        return {"active": name, "previous": previous}

    def import_model(self, source: Path | str, name: str | None = None, from_hub: bool = False,
                     filename: str | None = None) -> dict[str, Any]:
        """Import a model folder, an archive of one, a ``.gguf`` file, or (explicitly) a hub id.
        ``filename`` is what the file was called where it came from (an upload's own name): the
        bundle is named and its source shown by it."""
        work = Path(tempfile.mkdtemp(prefix="import-", dir=self._scratch_dir()))
        try:
            if from_hub:
                from huggingface_hub import snapshot_download
                folder = Path(snapshot_download(str(source), local_dir=work / "hub"))
                name = name or str(source).replace("/", "--")
            else:
                source = Path(source)
                if source.is_dir():
                    folder = source
                elif source.suffix == ".gguf" or _magic(source) == b"GGUF":
                    folder = self._gguf_folder(source, work)
                else:
                    folder = safe_extract(source, work / "unpacked")
                    entries = [p for p in folder.iterdir()]
                    if len(entries) == 1 and entries[0].is_dir():
                        folder = entries[0]
                if not (folder / "config.json").exists() and not (folder / GGUF_NAME).exists():
                    raise BundleError("a model folder needs config.json (a Hugging Face model folder)")
                name = name or Path(filename or source.name).stem
            self._in_pllm(lambda pllm: catalog.require_absent(pllm, name))
            shown_source = f"upload of {filename}" if filename else str(source)
            scan = scan_folder(folder, name, self._report)

            def add(pllm):
                bundle = import_folder(folder, name, shown_source, scan=scan)
                catalog.add_bundle(pllm, bundle)
                return bundle.summary()
            return self._in_pllm(add)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _gguf_folder(self, source: Path, work: Path) -> Path:
        """A folder to import a GGUF upload from: the file itself where llama.cpp will serve it,
        else the folder transformers makes by dequantizing it."""
        folder = work / "gguf"
        folder.mkdir()
        gguf = folder / GGUF_NAME
        try:
            os.link(source, gguf)
        except OSError:
            shutil.copyfile(source, gguf)
        if self.default_engine() == "llama.cpp":
            from batos.llm.lora_gguf import check_model_file

            check_model_file(gguf)
            return folder
        return convert_gguf(gguf, work / "converted", self.settings.model_dtype, self._report)

    # --- experts -------------------------------------------------------------------------------

    def _expert_prompts(self) -> dict[str, str]:
        return self._in_pllm(catalog.expert_prompts)

    def import_experts(self, source: Path, name: str | None = None) -> list[str]:
        """Import the adapter folder(s) at ``source`` (a folder or an archive); idempotent by digest."""
        work = Path(tempfile.mkdtemp(prefix="experts-", dir=self._scratch_dir()))
        try:
            root = source if source.is_dir() else safe_extract(source, work / "unpacked")
            folders = sorted({p.parent for p in root.rglob(ADAPTER_CONFIG)})
            if not folders:
                raise BundleError(f"{source.name} holds no adapter ({ADAPTER_CONFIG} not found)")
            if name and len(folders) > 1:
                raise BundleError(f"a name can only be given to one adapter; {source.name} holds {len(folders)}")
            return [self._import_expert(folder, name or folder.name) for folder in folders]
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _import_expert(self, folder: Path, name: str) -> str:
        """Store the adapter in ``folder`` (and, under llama.cpp, its GGUF LoRA form) in one
        transaction; an adapter the engine cannot apply is refused and nothing is written."""
        gguf_model = getattr(self.backend, "model_file", None)
        with self._lora_work() as work:
            def add(pllm):
                record = adapter_record(folder, name)
                if not catalog.add_expert(pllm, name, record):
                    return False
                if gguf_model is not None:
                    self._add_gguf_lora(pllm, name, dict(record.config), folder / ADAPTER_WEIGHTS,
                                        self.backend.name, gguf_model, work)
                return True
            if not self._in_pllm(add):
                return name  # the same adapter: nothing to do
        if self.backend is not None:
            self._tell_backend(name)
        log.info("expert %s imported", name)
        return name

    def _tell_backend(self, name: str) -> None:
        if self.kind != "embedded":
            self.backend.know_expert(name, f"You are {name}.")
        elif self.backend.engine == "llama.cpp":
            ready, _ = self._in_pllm(lambda pllm: catalog.gguf_experts(pllm, self.backend.name))
            self.backend.know_expert(*next(entry for entry in ready if entry[0] == name))
        else:
            self.backend.know_expert(*self._in_pllm(lambda pllm: catalog.expert(pllm, name)))

    def import_staged_experts(self) -> list[str]:
        """Import every adapter in the staging folder (folders or archives); safe to repeat."""
        staging = Path(self.settings.lora_staging)
        if not staging.is_dir():
            return []
        imported = []
        for entry in sorted(staging.iterdir()):
            try:
                if entry.is_dir() and (entry / ADAPTER_CONFIG).exists():
                    imported.append(self._import_expert(entry, entry.name))
                elif entry.is_file():
                    imported.extend(self.import_experts(entry))
            except (BundleError, ValueError) as exc:
                log.error("staged adapter %s not imported: %s", entry, exc)
        return imported

    # --- generation ----------------------------------------------------------------------------

    def check_available(self) -> None:
        """ModelUnavailable if no model will answer: none configured, or it failed to load."""
        if self.kind == "none":
            raise ModelUnavailable("this UVM runs without a language model (BATOS_LLM=none)")
        if self.state == "failed":
            raise ModelUnavailable(f"the language model failed to load: {self.error}")

    def wait_ready(self, timeout: float | None = None) -> None:
        if self.kind == "none":
            raise ModelUnavailable("this UVM runs without a language model (BATOS_LLM=none)")
        if not self._ready.wait(timeout):
            raise ModelUnavailable(f"the language model is still {self.state}; try again shortly")
        if self.backend is None:
            raise ModelUnavailable(f"the language model failed to load: {self.error}")

    def generate(self, prompt: str, expert: str | None = None, max_new_tokens: int | None = None,
                 system: str | None = None, temperature: float = 0.0, seed: int | None = None,
                 stop: list[str] | None = None, timeout: float | None = None,
                 stream: Stream | None = None) -> Generation:
        """One generation for one user prompt (blocking; waits for the model first); ``stream``
        gets the text piece by piece as it is generated."""
        self.wait_ready(timeout)
        return self.backend.generate(chat(prompt, system), expert=expert,
                                     max_new_tokens=max_new_tokens or self.settings.max_new_tokens,
                                     stop=stop, temperature=temperature, seed=seed, stream=stream)

    def expert_names(self) -> set[str]:
        """The experts the loaded model can apply now (none while it is not loaded)."""
        backend = self.backend
        return set(backend.stats().get("experts") or ()) if backend is not None else set()

    def stats(self) -> dict[str, Any]:
        figures: dict[str, Any] = {"backend": self.kind, "state": self.state}
        if self.progress and self.state not in ("ready", "off"):
            figures["progress"] = self.progress
        if self.error:
            figures["error"] = self.error
        if self.backend is not None:
            figures.update(self.backend.stats())
            figures["backend"] = self.kind
        if self.kind == "embedded":
            model = self.shipped_default()
            figures["default_model"] = {"key": model.key, "name": model.name, "why": self.default_why()}
        return figures


def llama_cpp_available() -> bool:
    """Whether the llama.cpp engine (llama-cpp-python) is installed."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _magic(path: Path) -> bytes:
    """The first four bytes of a file (an upload is never read whole into memory)."""
    with open(path, "rb") as f:
        return f.read(4)
