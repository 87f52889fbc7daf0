"""Atomic file writes that never replace a user's file unless asked.

A write goes to a hidden temporary beside the target (``.NAME.<host>-<pid>.<random>.tmp``) and is moved
into place with ``os.replace`` only when the writer succeeded, so a crash never leaves a half-written
output under the real name. The host tag and pid in the temporary's name let a later write to the same
path remove what a killed writer left behind without touching a concurrent writer's live temporary.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PureWindowsPath

from stitch.errors import StitchError, UsageError

STALE_AGE_S = 3600.0
"""Temporaries whose writer cannot be checked (older stitch, another host) are stale after this long."""

_REFUSED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES, errno.EPERM, errno.EISDIR, errno.EBADF}
"""Errors meaning "this OS/filesystem will not fsync that", not "the data did not reach the disk"."""


class OutputExistsError(StitchError, FileExistsError):
    """The output path exists and overwriting was not asked for."""


class DiskFullError(StitchError, OSError):
    """The device filled while stitch wrote an output; what it had written was removed."""


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the device (or the user's quota) is full; libraries written in Rust
    (safetensors) report it in their message, not as an OSError."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(word in str(err) for word in ("No space left on device", "StorageFull", "Disk quota exceeded"))


def disk_full(path: Path, needed: str) -> DiskFullError:
    """One line naming the output, what it needs (``needed``) and the bytes free where it goes."""
    try:
        free = f"{_free_bytes(path):,} bytes free there"
    except OSError:
        free = "free space unknown"
    return DiskFullError(
        f"{path}: no space left on the device ({needed}, {free}); nothing was left half-written: free space "
        "or choose another folder and run again"
    )


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path if path.is_dir() else path.parent).free


def ensure_writable(path: str | Path, force: bool = False) -> Path:
    """Fail before any work if ``path`` exists (unless ``force``), so a long run never ends in a clobber."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass --force (force=True) to overwrite it")
    if path.is_dir():
        raise OutputExistsError(f"{path} is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (changing it races other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0o077)
    os.umask(current)
    return current


_HOST_TAG: str | None = None


def _host_tag() -> str:
    """A short, dot-free tag of this host: a pid only means something on the host that wrote it."""
    global _HOST_TAG
    if _HOST_TAG is None:
        _HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
    return _HOST_TAG


_TAGGED = re.compile(r"([0-9a-f]{8})-(\d+)\.[^.]+\.tmp")
_LEGACY = re.compile(r"[a-z0-9_]{8}\.tmp")  # stitch <= 0.1: mkstemp's random part only


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host; when unsure, say yes (keeping a temporary is the safe mistake)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, owned by someone else
        return True
    return True


def _is_stale(rest: str, age: float) -> bool:
    """Decide from the part of a temporary's name after ``.NAME.`` and its age whether its writer is gone."""
    tagged = _TAGGED.fullmatch(rest)
    if tagged:
        host, pid = tagged.group(1), int(tagged.group(2))
        if host == _host_tag() and os.name != "nt":
            return not _pid_alive(pid)
        return age > STALE_AGE_S
    if _LEGACY.fullmatch(rest):
        return age > STALE_AGE_S
    return False  # not one of ours: never touch it


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove temporaries of ``path`` left by killed writers (dead pid, or too old to check); best effort.

    Only names this module creates for exactly this target are considered, and a temporary whose writer
    is still running on this host is kept, so a concurrent write to the same path is not broken.
    """
    path = Path(path)
    prefix = f".{path.name}."
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            age = now - entry.stat(follow_symlinks=False).st_mtime
            if _is_stale(name[len(prefix) :], age):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # gone already (another cleaner), or not ours to remove
            continue
    return removed


def _fsync_file(path: Path) -> None:
    """Flush the file's data to disk so the rename never publishes an empty file after a power loss."""
    flags = os.O_RDWR if os.name == "nt" else os.O_RDONLY  # Windows needs write access to flush
    try:
        fd = os.open(path, flags | getattr(os, "O_BINARY", 0))
    except OSError as err:
        if err.errno in _REFUSED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in _REFUSED:
            raise
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; best effort (Windows and some filesystems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    The file gets the permissions of the user's umask (like any other output) after the block ran,
    because some writers (safetensors) replace the temporary with a new 0600 file; it is then fsynced,
    renamed over ``path``, and the folder fsynced. Stale temporaries of ``path`` are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_host_tag()}-{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        _fsync_file(Path(tmp))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except Exception as err:
        if is_disk_full(err):
            written = os.path.getsize(tmp) if os.path.lexists(tmp) else 0
            raise disk_full(path, f"it filled after {written:,} bytes of this file") from err
        raise
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (readers never see a half-written file)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result into place (for libraries that write to a path)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def safe_member(folder: str | Path, name: str) -> Path:
    """Resolve ``name`` (taken from a data file) inside ``folder``, refusing anything that could escape it.

    A name read from a file is untrusted: it must be a plain file name, with no separators (either OS's),
    no drive or absolute form, no ``..``, not hidden (leading ``.``), and must not resolve (through a
    symlink) outside ``folder``. Raises ValueError naming the problem; returns the resolved path.
    """
    if not isinstance(name, str) or not name:
        raise UsageError(f"file name {name!r} must be a non-empty string")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UsageError(f"file name {name!r} contains control characters")
    if os.path.isabs(name) or PureWindowsPath(name).drive or PureWindowsPath(name).root:
        raise UsageError(f"file name {name!r} is absolute; only names inside {folder} are allowed")
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        raise UsageError(f"file name {name!r} contains a path separator; only plain names are allowed")
    if ".." in name:
        raise UsageError(f"file name {name!r} contains '..'")
    if name.startswith("."):
        raise UsageError(f"file name {name!r} is hidden (starts with '.')")
    root = Path(folder).resolve()
    target = (root / name).resolve()
    if target == root or not target.is_relative_to(root):
        raise UsageError(f"file name {name!r} resolves outside {folder}")
    return target
