"""Large files in the image: model bundles and expert (LoRA adapter) records.

A ModelBundle keeps one ZODB Blob per file of a model folder (never one archive), so a model is
loaded by pointing at the committed blob files in place. Importing moves (or, across file
systems, copies) each file into the blob folder; the caller's commit makes the bundle exist, so a
crash before the commit leaves no trace of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import persistent
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping
from ZODB.blob import Blob

from batos.errors import BatosError
from batos.image.objects import UvmObject
from batos.image.protection import mark_kernel

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (what, done, total)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CHUNK = 8 * 1024 * 1024


class BundleError(BatosError, ValueError):
    """A folder or adapter that cannot be imported as asked."""

    code = "import_failed"


def sha256_of_file(path: str | os.PathLike, on_chunk: Callable[[int], None] | None = None) -> str:
    """The hex sha256 of a file's bytes, read in chunks (``on_chunk`` gets each chunk's size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            if on_chunk:
                on_chunk(len(chunk))
    return digest.hexdigest()


def blob_from_file(path: Path, keep_source: bool) -> Blob:
    """A new Blob holding ``path``'s bytes; moved in when the source need not be kept."""
    blob = Blob()
    if keep_source:
        handle, staged = tempfile.mkstemp(dir=path.parent, prefix=".batos-stage-")
        os.close(handle)
        os.remove(staged)
        try:
            os.link(path, staged)  # same file system: no copy
        except OSError:
            shutil.copyfile(path, staged)
        path = Path(staged)
    blob.consumeFile(str(path))
    return blob


class ModelBundle(persistent.Persistent):
    """One model: its files as Blobs, with sizes and digests to verify them by."""

    def __init__(self, name: str, source: str, architecture: str | None = None):
        self.name = name
        self.source = source
        self.architecture = architecture
        self.created = time.time()
        self.files = PersistentMapping()  # relative path -> Blob
        self.sizes = PersistentMapping()
        self.digests = PersistentMapping()

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())

    def summary(self) -> dict:
        return {"name": self.name, "source": self.source, "architecture": self.architecture,
                "files": len(self.files), "bytes": self.total_bytes, "created": self.created}

    def link_into(self, folder: str | os.PathLike) -> Path:
        """Fill ``folder`` with symbolic links to the committed blob files (zero copy)."""
        folder = Path(folder)
        for relative, blob in self.files.items():
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(blob.committed(), target)
        return folder


@dataclass
class FolderScan:
    """What :func:`scan_folder` found: the files of a model folder with their sizes and digests."""

    folder: Path
    files: list[Path]
    sizes: dict[str, int]
    digests: dict[str, str]
    architecture: str | None


def scan_folder(folder: str | os.PathLike, name: str = "", progress: Progress | None = None) -> FolderScan:
    """Sizes and sha256 digests of every file under ``folder`` (the slow part of an import)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".batos-stage-"))
    if not files:
        raise BundleError(f"{folder} holds no files")
    architecture = None
    config = folder / "config.json"
    if config.exists():
        architectures = json.loads(config.read_text()).get("architectures") or [None]
        architecture = architectures[0]
    total = sum(p.stat().st_size for p in files)
    sizes, digests, done = {}, {}, 0

    def hashed(size: int) -> None:
        nonlocal done
        done += size
        if progress:
            progress(f"importing {name}", done, total)
    for path in files:
        relative = path.relative_to(folder).as_posix()
        sizes[relative] = path.stat().st_size
        digests[relative] = sha256_of_file(path, hashed)
    if progress and total == 0:
        progress(f"importing {name}", 0, 0)
    return FolderScan(folder, files, sizes, digests, architecture)


def import_folder(folder: str | os.PathLike, name: str, source: str, progress: Progress | None = None,
                  scan: FolderScan | None = None) -> ModelBundle:
    """A ModelBundle holding every file under ``folder`` (the caller adds it and commits).

    The files stay where they are (hard-linked into the blob folder where the file system allows),
    so an aborted transaction can simply import again.
    """
    scan = scan or scan_folder(folder, name, progress)
    bundle = ModelBundle(name, source, scan.architecture)
    for path in scan.files:
        relative = path.relative_to(scan.folder).as_posix()
        bundle.sizes[relative] = scan.sizes[relative]
        bundle.digests[relative] = scan.digests[relative]
        bundle.files[relative] = blob_from_file(path, keep_source=True)
    return bundle


def verify_bundle(bundle: ModelBundle) -> list[str]:
    """Problems with the committed files of ``bundle`` (empty when every file is intact)."""
    problems = []
    for relative, blob in bundle.files.items():
        try:
            path = Path(blob.committed())
        except Exception as exc:
            problems.append(f"{relative}: {exc}")
            continue
        if path.stat().st_size != bundle.sizes[relative]:
            problems.append(f"{relative}: size {path.stat().st_size}, expected {bundle.sizes[relative]}")
        elif sha256_of_file(path) != bundle.digests[relative]:
            problems.append(f"{relative}: contents differ from the digest recorded at import")
    return problems


def adapter_record(folder: str | os.PathLike, name: str) -> UvmObject:
    """A proxy for the peft LoRA adapter in ``folder``: its config as data, its weights a Blob."""
    folder = Path(folder)
    config_path, weights_path = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        raise BundleError(f"{folder} is not a peft adapter: it needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise BundleError(f"{config_path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        raise BundleError(f"{config_path} does not describe a LoRA adapter")
    record = UvmObject(
        adapter_name=name,
        config=config,
        model_blob=blob_from_file(weights_path, keep_source=True),
        size=weights_path.stat().st_size,
        sha256=sha256_of_file(weights_path),
        imported_at=time.time(),
    )
    mark_kernel(record)  # what the kernel trusts of an expert; only the kernel changes it
    return record


def ensure_model_slots(pllm: UvmObject) -> None:
    """Give ``pLLM_obj`` its bundle and adapter repositories (schema 2)."""
    if "model_bundles" not in pllm._slots:
        pllm.model_bundles = OOBTree()
    if "lora_repository" not in pllm._slots:
        pllm.lora_repository = OOBTree()
    if "active_model" not in pllm._slots:
        pllm.active_model = None
