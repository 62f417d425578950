"""Upkeep of an image on disk: doctor (integrity check), backup and restore (repozo), pack.

The doctor reads a file image without taking its lock, so it can examine an image a live UVM is
serving; it never writes.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import ZODB
from ZODB.blob import BlobStorage, is_blob_record
from ZODB.FileStorage import FileStorage
from ZODB.POSException import POSKeyError
from ZODB.scripts import fstest
from ZODB.serialize import get_refs
from ZODB.utils import get_pickle_metadata, load_current, z64

from batos.image.genesis import PLAIN_ROOT_OBJECTS, SCHEMA_KEY, SCHEMA_VERSION
from batos.image.kernel_checks import blob_file_problem, check_kernel, outside_write_notes
from batos.image.storage import ImageError, lock_holder_pid, normalize_uri, open_database, pid_is_alive

EXPECTED_ROOT = ("traits_obj", "genesis_obj", "active_cycles", *PLAIN_ROOT_OBJECTS)


@dataclass
class DoctorReport:
    path: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    objects: int = 0
    blobs: int = 0
    uvm_objects: list[bytes] = field(default_factory=list)  # oids, for the kernel checks

    @property
    def clean(self) -> bool:
        return not self.problems


def lock_state(path: str) -> str:
    """A sentence saying who, if anyone, holds the image's lock (probing it without keeping it)."""
    if not os.path.exists(path + ".lock"):
        return "unlocked (no lock file)"
    pid = lock_holder_pid(path)
    with open(path + ".lock", "rb") as lock_file:
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            alive = " (alive)" if pid and pid_is_alive(pid) else ""
            return f"locked by live process {pid or '?'}{alive}"
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
    return f"unlocked (lock file left by process {pid or '?'}, which has exited; harmless)"


def doctor(uri: str | None) -> DoctorReport:
    """Check a file image's structure, references, blobs and schema; write nothing."""
    target = normalize_uri(uri)
    if not target.file_path:
        raise ImageError("the doctor examines file images (file://PATH)")
    path = target.file_path
    if not os.path.exists(path):
        raise ImageError(f"no image at {path}")
    report = DoctorReport(path)
    report.notes.append(f"lock: {lock_state(path)}")
    _check_structure(path, report)
    storage = FileStorage(path, read_only=True)
    if target.blob_dir and os.path.isdir(target.blob_dir):
        storage = BlobStorage(target.blob_dir, storage)
    try:
        _check_references(storage, report)
        _check_schema(storage, report)
    finally:
        storage.close()
    return report


def _check_structure(path: str, report: DoctorReport) -> None:
    try:
        fstest.check(path)
    except fstest.FormatError as exc:
        if _only_an_unfinished_tail(path, exc):
            report.notes.append(
                "the file ends in a transaction that never finished committing (it was never "
                "acknowledged); the next start discards it")
        else:
            report.problems.append(f"file structure: {exc}")


def _only_an_unfinished_tail(path: str, exc: Exception) -> bool:
    """True when the damage fstest found lies after the last complete transaction."""
    positions = re.findall(r"at (\d+)", str(exc))
    if not positions:
        return False
    storage = FileStorage(path, read_only=True)
    try:
        good_end = storage._pos  # where the last complete transaction ends
    finally:
        storage.close()
    return int(positions[-1]) >= good_end


def _check_references(storage, report: DoctorReport) -> None:
    """Walk everything reachable from the root: each record loads, its class imports, its
    references exist, and each blob has its file."""
    seen = {z64}
    queue = deque([z64])
    importable: dict[tuple[str, str], bool] = {}
    while queue:
        oid = queue.popleft()
        label = hex(int.from_bytes(oid, "big"))
        try:
            data, serial = load_current(storage, oid)
        except POSKeyError:
            report.problems.append(f"object {label} is referenced but missing")
            continue
        report.objects += 1
        try:
            module, name = get_pickle_metadata(data)
            references = [ref for ref, _ in get_refs(data)]
        except Exception as exc:
            report.problems.append(f"object {label}: its record cannot be read ({type(exc).__name__}: {exc})")
            continue
        if (module, name) == ("batos.image.objects", "UvmObject"):
            report.uvm_objects.append(oid)
        if (module, name) not in importable:
            importable[(module, name)] = _importable(module, name)
        if not importable[(module, name)]:
            report.problems.append(f"object {label} has class {module}.{name}, which cannot be imported")
        if is_blob_record(data):
            report.blobs += 1
            try:
                problem = blob_file_problem(storage.loadBlob(oid, serial))
            except (POSKeyError, AttributeError):
                problem = "it has no file in the blob folder"
            if problem:
                report.problems.append(f"blob {label}: {problem}")
        for ref in references:
            if ref not in seen:
                seen.add(ref)
                queue.append(ref)


def _importable(module: str, name: str) -> bool:
    try:
        return hasattr(importlib.import_module(module), name)
    except Exception:
        return False


def _check_schema(storage, report: DoctorReport) -> None:
    if report.problems:
        return  # the root may not even load; the problems already say why
    db = ZODB.DB(storage)
    try:
        conn = db.open()
        root = conn.root()
        version = root.get(SCHEMA_KEY)
        if version is None:
            report.problems.append("the image has no schema version (genesis never completed)")
        elif version > SCHEMA_VERSION:
            report.notes.append(f"schema version {version} is newer than this BatOS ({SCHEMA_VERSION})")
        else:
            report.notes.append(f"schema version {version}")
        missing = [name for name in EXPECTED_ROOT if name not in root]
        if version is not None and missing:
            report.problems.append(f"root objects missing: {', '.join(missing)}")
        elif version is not None:
            report.problems += check_kernel(root, (conn.get(oid) for oid in report.uvm_objects))
            report.notes += outside_write_notes(root)
        conn.close()
    finally:
        db.close()


def _repozo(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "ZODB.scripts.repozo", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageError(f"repozo failed: {(result.stderr or result.stdout).strip()}")


def _copy_new_files(source: str, destination: str) -> int:
    """Copy files under ``source`` missing from ``destination`` (committed blobs never change)."""
    copied = 0
    for folder, _, files in os.walk(source):
        relative = os.path.relpath(folder, source)
        if relative.split(os.sep)[0] == "tmp":
            continue
        os.makedirs(os.path.join(destination, relative), exist_ok=True)
        for name in files:
            target = os.path.join(destination, relative, name)
            if not os.path.exists(target):
                shutil.copy2(os.path.join(folder, name), target)
                copied += 1
    return copied


def _wait_for_a_fresh_second(repository: str) -> None:
    """repozo names backups by the second; a second backup in the same second would collide."""
    while True:
        stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime())
        if not any(name.startswith(stamp) for name in os.listdir(repository)):
            return
        time.sleep(1.0 - time.time() % 1.0 + 0.01)


def backup(uri: str | None, repository: str) -> dict:
    """Add a backup of the image to ``repository`` (repozo; full or incremental), blobs included."""
    target = normalize_uri(uri)
    if not target.file_path or not os.path.exists(target.file_path):
        raise ImageError(f"no file image at {target.uri}")
    os.makedirs(repository, exist_ok=True)
    _wait_for_a_fresh_second(repository)
    _repozo("-B", "-r", repository, "-f", target.file_path)
    copied = 0
    if target.blob_dir and os.path.isdir(target.blob_dir):
        copied = _copy_new_files(target.blob_dir, os.path.join(repository, "blobs"))
    return {"repository": repository, "blob_files_copied": copied}


def restore(repository: str, uri: str, force: bool = False) -> dict:
    """Write the newest backup in ``repository`` to the image ``uri`` (refusing to overwrite)."""
    target = normalize_uri(uri)
    if not target.file_path:
        raise ImageError("restore writes a file image (file://PATH)")
    if not os.path.isdir(repository):
        raise ImageError(f"no backup repository at {repository}")
    if os.path.exists(target.file_path):
        if not force:
            raise ImageError(f"{target.file_path} exists; pass --force to replace it")
        if "locked by live process" in lock_state(target.file_path):
            raise ImageError(f"{target.file_path} is in use ({lock_state(target.file_path)})")
    _repozo("-R", "-r", repository, "-o", target.file_path)
    for stale in (".index", ".tmp", ".lock"):
        if os.path.exists(target.file_path + stale):
            os.remove(target.file_path + stale)
    copied = 0
    blobs = os.path.join(repository, "blobs")
    if target.blob_dir and os.path.isdir(blobs):
        if force and os.path.isdir(target.blob_dir):
            shutil.rmtree(target.blob_dir)
        copied = _copy_new_files(blobs, target.blob_dir)
    return {"image": target.file_path, "blob_files_copied": copied}


def pack(uri: str | None, days: float = 0) -> dict:
    """Pack an image no process is serving: drop history older than ``days`` and garbage."""
    db = open_database(uri)
    try:
        before = db.getSize()
        db.pack(days=days)
        return {"size_before": before, "size_after": db.getSize()}
    finally:
        db.close()
