"""Hostile archives are refused whole and write nothing, anywhere."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile

import pytest

from batos.image.archives import UnsafeArchiveError
from batos.sandbox.unpacking import safe_extract


def make_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_member(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special_member(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


HOSTILE_TARS = {
    "dotdot": [file_member("ok.txt"), file_member("../escaped.txt")],
    "absolute": [file_member("/tmp/batos-absolute-escape.txt")],
    "symlink_out": [special_member("link", tarfile.SYMTYPE, "../../outside"), file_member("ok.txt")],
    "symlink_absolute": [special_member("link", tarfile.SYMTYPE, "/etc/passwd")],
    "hardlink_out": [special_member("hard", tarfile.LNKTYPE, "../outside")],
    "device": [special_member("dev", tarfile.CHRTYPE)],
    "fifo": [special_member("pipe", tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_TARS))
def test_hostile_tar_is_refused_and_writes_nothing(tmp_path, kind):
    archive = make_tar(tmp_path / "evil.tar", HOSTILE_TARS[kind])
    before = set(os.listdir(tmp_path))
    target = tmp_path / "out" / "target"
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, target)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert set(os.listdir(tmp_path)) - before <= {"out"}
    assert not os.path.exists("/tmp/batos-absolute-escape.txt")
    assert not (tmp_path / "escaped.txt").exists()


def test_zip_slip_and_zip_symlink_are_refused(tmp_path):
    slip = tmp_path / "slip.zip"
    with zipfile.ZipFile(slip, "w") as z:
        z.writestr("fine.txt", "ok")
        z.writestr("../../slipped.txt", "gotcha")
    with pytest.raises(UnsafeArchiveError, match=r"\.\."):
        safe_extract(slip, tmp_path / "a")
    absolute = tmp_path / "abs.zip"
    with zipfile.ZipFile(absolute, "w") as z:
        z.writestr("/abs.txt", "gotcha")
    with pytest.raises(UnsafeArchiveError, match="absolute"):
        safe_extract(absolute, tmp_path / "b")
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as z:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        safe_extract(link, tmp_path / "c")
    assert not any((tmp_path / d).exists() for d in "abc")
    assert not (tmp_path.parent / "slipped.txt").exists()


def test_size_bomb_and_member_flood_are_refused(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.bin", b"\0" * (8 * 1024 * 1024))  # compresses to a few KiB
    assert bomb.stat().st_size < 100_000
    with pytest.raises(UnsafeArchiveError, match="bytes"):
        safe_extract(bomb, tmp_path / "a", max_bytes=1024 * 1024)
    flood = make_tar(tmp_path / "flood.tar", [file_member(f"f{i}") for i in range(50)])
    with pytest.raises(UnsafeArchiveError, match="members"):
        safe_extract(flood, tmp_path / "b", max_members=10)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_not_an_archive_and_existing_target(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(UnsafeArchiveError, match="neither"):
        safe_extract(junk, tmp_path / "a")
    good = make_tar(tmp_path / "good.tar", [file_member("dir/file.txt", b"hello")])
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError):
        safe_extract(good, tmp_path / "exists")


def test_good_archives_extract(tmp_path):
    good = make_tar(tmp_path / "good.tar", [file_member("dir/file.txt", b"hello"),
                                             special_member("dir/link", tarfile.SYMTYPE, "file.txt")])
    out = safe_extract(good, tmp_path / "t")
    assert (out / "dir" / "file.txt").read_bytes() == b"hello"
    assert (out / "dir" / "link").read_bytes() == b"hello"
    z = tmp_path / "good.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a/b.txt", "zip")
    assert (safe_extract(z, tmp_path / "z") / "a" / "b.txt").read_text() == "zip"


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_small_archive_may_not_unpack_to_a_hundred_times_its_size(tmp_path, kind):
    zeros = b"\0" * (100 * 1024 * 1024)
    bomb = tmp_path / f"bomb.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("zeros.bin", zeros)
    else:
        with tarfile.open(bomb, "w:gz") as t:
            info = tarfile.TarInfo("zeros.bin")
            info.size = len(zeros)
            t.addfile(info, io.BytesIO(zeros))
    assert bomb.stat().st_size < 1024 * 1024
    with pytest.raises(UnsafeArchiveError, match="bytes"):
        safe_extract(bomb, tmp_path / "out")  # default limits
    assert not (tmp_path / "out").exists()


def test_archives_are_read_in_another_process(tmp_path, monkeypatch):
    """This process never parses an archive: with its own readers broken, extraction still works."""
    good = make_tar(tmp_path / "good.tar.gz", [file_member("dir/file.txt", b"hello")])
    z = tmp_path / "good.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/b.txt", "zip")

    def broken(*args, **kwargs):
        raise AssertionError("an archive was parsed in the caller's process")
    monkeypatch.setattr(tarfile, "open", broken)
    monkeypatch.setattr(zipfile, "ZipFile", broken)
    assert (safe_extract(good, tmp_path / "t") / "dir" / "file.txt").read_bytes() == b"hello"
    assert (safe_extract(z, tmp_path / "z") / "a" / "b.txt").read_text() == "zip"


@pytest.mark.parametrize("name, folder", [("../x", False), ("/abs", False), ("a/../../b", False), ("", False),
                                          ("dir/", False), ("a\0b", False)])
def test_a_member_name_the_reader_sends_is_checked_again(tmp_path, name, folder):
    from batos.sandbox.unpacking import member_path

    with pytest.raises(UnsafeArchiveError):
        member_path(tmp_path, name, folder)
    assert member_path(tmp_path, "./", True) == tmp_path
    assert member_path(tmp_path, "./a/b.txt", False) == tmp_path / "a" / "b.txt"


def make_pax(path, members):
    """A PAX tar of (name, bytes) files and (name, None) folders: long names kept whole."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("members", [
    [("a/" * 1200 + "f", b"deep")],  # made whole, mkdir would recurse past Python's limit
    [("a/" * 60, None), ("a/" * 120, None), ("a/" * 1150, None), ("a", b"a file where the folder is")],
])
def test_a_member_nested_too_deep_is_refused_and_leaves_nothing(tmp_path, members):
    archive = make_pax(tmp_path / "deep.tar", members)
    with pytest.raises(UnsafeArchiveError, match="deeper"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_destination_that_cannot_be_made_leaves_nothing_behind(tmp_path):
    import glob
    import tempfile

    archive = make_pax(tmp_path / "ok.tar", [("a", b"x")])
    (tmp_path / "plain").write_text("not a folder")
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "batos-unpack-*")))
    with pytest.raises(OSError):
        safe_extract(archive, tmp_path / "plain" / "dest")
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "batos-unpack-*"))) == before
