"""The memory client sends only regular files inside the folders it was given, and counts the
bytes it reads (the second review's finding 10)."""

from __future__ import annotations

import os

import pytest

from batos.client import Client, memory_files
from batos.errors import TooLarge


def test_links_that_leave_the_folder_and_special_files_are_skipped_with_a_reason(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("the secret")
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "kept.md").write_text("# kept")
    (notes / "sub" / "inner.md").write_text("# inner")
    (notes / "alias.md").symlink_to(notes / "kept.md")  # a link that stays inside: followed
    (notes / "leak.md").symlink_to(outside / "secret.md")
    (notes / "environ.txt").symlink_to("/proc/self/environ")
    (notes / "linked").symlink_to(outside, target_is_directory=True)
    os.mkfifo(notes / "pipe.md")
    (notes / "zero.txt").symlink_to("/dev/zero")
    files, skipped = memory_files([notes])
    assert sorted(os.path.relpath(f, notes) for f in files) == ["alias.md", "kept.md", os.path.join("sub", "inner.md")]
    reasons = {os.path.basename(s["source"]): s["error"] for s in skipped}
    assert set(reasons) == {"leak.md", "environ.txt", "pipe.md", "zero.txt"}
    assert "leaves" in reasons["leak.md"] and "leaves" in reasons["environ.txt"]
    assert "not a regular file" in reasons["pipe.md"]
    assert all(s["status"] == "skipped" for s in skipped)


def test_a_special_file_named_outright_is_skipped_not_read(tmp_path):
    os.mkfifo(tmp_path / "pipe.md")  # opening it to read would block for ever
    files, skipped = memory_files([tmp_path / "pipe.md", "/dev/zero"])
    assert files == [] and [s["status"] for s in skipped] == ["skipped", "skipped"]


def test_bytes_are_counted_as_they_are_read_not_taken_from_the_size(tmp_path):
    """/proc files say they are empty; the upload stops at the limit before anything is sent."""
    environ = "/proc/self/environ"
    assert os.path.getsize(environ) == 0 and len(open(environ, "rb").read()) > 16
    with Client("tcp://127.0.0.1:9", timeout=0.5) as client:  # nothing listens: nothing may be sent
        with pytest.raises(TooLarge):
            client.upload(environ, max_bytes=16)
        with pytest.raises(OSError):
            client.upload("/dev/zero", max_bytes=16)
