"""Atomic writes: permissions from the umask, fsync, cleanup of killed writers' temporaries, safe names."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stitch.io import atomic
from stitch.io.atomic import (
    OutputExistsError,
    atomic_path,
    atomic_write,
    atomic_write_text,
    ensure_writable,
    remove_stale_temporaries,
    safe_member,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions and pids")


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid no longer names a process
    return child.pid


def _temp(folder: Path, target: str, pid: int, host: str | None = None) -> Path:
    path = folder / f".{target}.{host or atomic._host_tag()}-{pid}.abcd1234.tmp"
    path.write_bytes(b"x" * 1000)
    return path


@posix_only
@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_safetensors_output_follows_the_umask(tmp_path, umask, mask, expected):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    umask(mask)
    out = tmp_path / "w.safetensors"
    atomic_write(out, lambda tmp: save_file({"w": torch.arange(3.0)}, str(tmp)))
    assert _mode(out) == expected  # safetensors itself leaves a fresh 0600 file in place of the temporary
    assert load_file(str(out))["w"].tolist() == [0.0, 1.0, 2.0]
    atomic_write_text(tmp_path / "t.txt", "hi")
    assert _mode(tmp_path / "t.txt") == expected


def test_text_write_replaces_and_leaves_no_temporary(tmp_path):
    out = tmp_path / "sub" / "a.json"
    atomic_write_text(out, "one")
    atomic_write_text(out, "two")
    assert out.read_text() == "two"
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.json"]


def test_failed_writer_keeps_the_old_file_and_no_temporary(tmp_path):
    out = tmp_path / "a.txt"
    out.write_text("old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(out, broken)
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_temporary_name_carries_host_and_pid(tmp_path):
    with atomic_path(tmp_path / "a.bin") as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(f".a.bin.{atomic._host_tag()}-{os.getpid()}.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"1")
    assert (tmp_path / "a.bin").read_bytes() == b"1" and not tmp.exists()


def test_file_and_folder_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write_text(tmp_path / "a.txt", "x")
    expected = ["fsync file", "replace", "fsync dir"] if os.name == "posix" else ["fsync file", "replace"]
    assert events == expected and (tmp_path / "a.txt").read_text() == "x"


def test_fsync_refused_by_the_filesystem_is_tolerated(tmp_path, monkeypatch):
    def refuse(fd):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "fsync", refuse)
    atomic_write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").read_text() == "x"

    def io_error(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", io_error)  # a real write error is not swallowed
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "b.txt", "x")
    assert not (tmp_path / "b.txt").exists()


@posix_only
def test_stale_temporary_of_a_dead_writer_is_removed_live_one_kept(tmp_path):
    dead = _temp(tmp_path, "model.safetensors", _dead_pid())
    live = _temp(tmp_path, "model.safetensors", os.getpid())
    other_target = _temp(tmp_path, "other.safetensors", _dead_pid())
    longer_name = tmp_path / f".model.safetensors.x.{atomic._host_tag()}-{_dead_pid()}.abcd1234.tmp"
    longer_name.write_bytes(b"")  # a temporary of "model.safetensors.x", not of our target
    atomic_write_text(tmp_path / "model.safetensors", "new")
    assert not dead.exists()
    assert live.exists() and other_target.exists() and longer_name.exists()
    assert (tmp_path / "model.safetensors").read_text() == "new"


def test_unverifiable_temporaries_are_removed_only_when_old(tmp_path):
    old = time.time() - atomic.STALE_AGE_S - 60
    legacy_old = tmp_path / ".a.txt.k3j_9xqz.tmp"  # stitch 0.1 names: no pid
    legacy_new = tmp_path / ".a.txt.m2n8p0qq.tmp"
    foreign = "0" * 8 if atomic._host_tag() != "0" * 8 else "1" * 8  # a pid from another host cannot be checked
    foreign_old = _temp(tmp_path, "a.txt", os.getpid(), host=foreign)
    foreign_new = _temp(tmp_path, "a.txt", 1, host=foreign)
    not_ours = tmp_path / ".a.txt.notes.tmp"  # not one of our name patterns: never touched, however old
    for path in (legacy_old, legacy_new, not_ours):
        path.write_bytes(b"x")
    for path in (legacy_old, foreign_old, not_ours):
        os.utime(path, (old, old))
    removed = remove_stale_temporaries(tmp_path / "a.txt")
    assert sorted(removed) == sorted([legacy_old, foreign_old])
    assert legacy_new.exists() and foreign_new.exists() and not_ours.exists()


def test_ensure_writable_refuses_existing_unless_forced(tmp_path):
    out = tmp_path / "x" / "a.csv"
    assert ensure_writable(out) == out and out.parent.is_dir()
    out.write_text("keep")
    with pytest.raises(OutputExistsError, match="already exists"):
        ensure_writable(out)
    assert ensure_writable(out, force=True) == out and out.read_text() == "keep"
    with pytest.raises(OutputExistsError, match="directory"):
        ensure_writable(tmp_path / "x", force=True)


@pytest.mark.parametrize(
    "name",
    [
        "../secret.png",
        "..",
        "a/../../b.png",
        "sub/a.png",
        "..\\b.png",
        "a\\b.png",
        "/etc/passwd",
        "C:\\x.png",
        "C:x.png",
        ".hidden.png",
        ".",
        "",
        "a..png",
        "nul\x00.png",
    ],
)
def test_safe_member_refuses_escapes(tmp_path, name):
    with pytest.raises(ValueError):
        safe_member(tmp_path, name)


@posix_only
def test_safe_member_refuses_a_symlink_out_of_the_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (tmp_path / "secret.png").write_bytes(b"s")
    (folder / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(ValueError, match="resolves outside"):
        safe_member(folder, "link.png")


def test_safe_member_accepts_plain_names(tmp_path):
    (tmp_path / "img 1.png").write_bytes(b"x")
    assert safe_member(tmp_path, "img 1.png") == (tmp_path / "img 1.png").resolve()
    assert safe_member(str(tmp_path), "not-yet-there.jpg") == tmp_path.resolve() / "not-yet-there.jpg"
