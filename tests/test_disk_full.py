"""A full disk fails cleanly: one line naming the output and the bytes it needs, no temporary left behind,
nothing a user had replaced — instead of SIGBUS from a memory-mapped write or a library's traceback."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors import SafetensorError

from stitch.apps.cli import main
from stitch.data import make_synthetic
from stitch.data.sharded import ShardedPairs, write_sharded
from stitch.io.atomic import DiskFullError, atomic_write


def _data():
    return make_synthetic(n_images=40, captions_per_image=2, text_dim=8, image_dim=12, latent_dim=4, seed=0)


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_convert_refuses_before_writing_when_the_folder_cannot_hold_it(tmp_path, monkeypatch):
    import stitch.data.sharded as sharded

    real = sharded.shutil.disk_usage
    monkeypatch.setattr(sharded.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    data = ShardedPairs.of(_data())
    with pytest.raises(
        DiskFullError, match=r"out: no space left on the device \(at least 5,120 bytes needed, 1,000 bytes free there"
    ):
        write_sharded(data, tmp_path / "out", dtype="float32")
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_a_disk_filling_during_convert_removes_the_temporary_and_keeps_the_old_folder(tmp_path, monkeypatch):
    out = write_sharded(ShardedPairs.of(_data()), tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(os, "posix_fallocate", _no_space, raising=False)
    with pytest.raises(DiskFullError, match=r"no space left on the device"):
        write_sharded(ShardedPairs.of(_data()), out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not _leftovers(tmp_path)


def test_the_cli_reports_a_full_disk_in_one_line(tmp_path, monkeypatch, capsys):
    data = _data()
    source = tmp_path / "d.npz"
    np.savez(
        source,
        **{"captions/embeddings": data.captions, "captions/image_index": data.caption_image},
        **{"images/embeddings": data.images, "images/split": data.image_split},
    )
    monkeypatch.setattr(os, "posix_fallocate", _no_space, raising=False)
    assert main(["convert", str(source), str(tmp_path / "out"), "-q"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no space left on the device" in err and str(tmp_path / "out") in err
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_an_atomic_write_that_fills_the_disk_keeps_the_old_file(tmp_path):
    target = tmp_path / "weights.safetensors"
    target.write_bytes(b"previous")

    def half_then_full(tmp: Path) -> None:
        tmp.write_bytes(b"x" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    filled = r"weights\.safetensors: no space left on the device \(it filled after 4,096 bytes of this file"
    with pytest.raises(DiskFullError, match=filled):
        atomic_write(target, half_then_full)
    assert target.read_bytes() == b"previous" and not _leftovers(tmp_path)


def test_safetensors_own_storage_full_error_is_recognised(tmp_path):
    """safetensors (Rust) reports a full disk as ``SafetensorError: ... StorageFull``, not as an OSError."""

    def full(tmp: Path) -> None:
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    with pytest.raises(DiskFullError, match=r"m\.safetensors: no space left on the device"):
        atomic_write(tmp_path / "m.safetensors", full)
    assert not _leftovers(tmp_path)


def test_a_run_whose_last_write_failed_says_how_to_replace_it(tmp_path, monkeypatch, capsys):
    """A closed-form fit whose bank hit a full disk keeps its weights but no model card: the re-run names the
    state and the way out (--force), instead of suggesting a --resume that has no checkpoint."""
    from stitch.training.run import Run

    data = _data()
    source = tmp_path / "d.npz"
    np.savez(source, **{"captions/embeddings": data.captions, "captions/image_index": data.caption_image},
             **{"images/embeddings": data.images, "images/split": data.image_split})  # fmt: skip
    run = tmp_path / "run"
    train = ["train", "--data", str(source), "--config", "ridge", "--out", str(run), "-q"]
    with monkeypatch.context() as patched:
        patched.setattr(Run, "save_bank", lambda self: atomic_write(self.path / "bank.safetensors", _no_space))
        assert main(train) != 0
    first = capsys.readouterr().err.strip()
    assert len(first.splitlines()) == 1 and "bank.safetensors: no space left on the device" in first
    assert main(train) != 0
    err = capsys.readouterr().err.strip()
    assert "did not finish (no README.md), with no checkpoint.pt to resume; pass --force" in err
    assert main([*train, "--force"]) == 0 and (run / "README.md").exists()
