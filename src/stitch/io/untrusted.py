"""Reading what a folder names: every folder stitch reads is untrusted input.

A name taken from a manifest, ``state.json`` or ``index.json`` must resolve (after symlinks) inside the
folder that names it, so a tampered file cannot make stitch read ``/etc/passwd`` or a sibling's data;
only regular files are opened, so a FIFO or a device in place of a shard is an error, never a hang; and
JSON is parsed with duplicate keys refused, because ``json`` silently keeps the last one.

Each check raises ``error`` (a ValueError subclass the caller picks: ``DataError``, ``IndexFileError``)
with one line naming the file and the entry, which the CLI prints as it is.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

Error = type[ValueError]


def inside(folder: str | Path, name: Any, named_by: str, error: Error = ValueError) -> Path:
    """``folder / name`` resolved, refused unless it stays inside ``folder`` (``named_by`` says which file
    lists ``name``). An absolute name, ``..`` or a symlink out of the folder are all caught by resolving."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise error(f"{named_by}: entry {name!r} is not a file name")
    root = Path(folder).resolve()
    target = (root / name).resolve()
    if target == root or not target.is_relative_to(root):
        raise error(f"{named_by}: entry {name!r} resolves outside {folder} ({target}); refusing to read it")
    return target


def regular_file(path: str | Path, what: str = "", error: Error = ValueError) -> Path:
    """``path`` if it is a regular file (symlinks followed); a FIFO, device, socket or folder is refused
    before anything opens it (opening a FIFO blocks forever). A missing file is ``FileNotFoundError``."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror}){what}") from err
    if not stat.S_ISREG(mode):
        raise error(f"{path}: is a {_kind(mode)}, not a regular file{what}; refusing to open it")
    return path


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"))
    kinds += ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))
    return next((name for test, name in kinds if test(mode)), "special file")


def unique_keys(where: str, error: Error = ValueError) -> Callable[[list[tuple[str, Any]]], dict]:
    """A ``json`` ``object_pairs_hook`` refusing an object that repeats a key (``json`` would keep the last)."""

    def hook(pairs: list[tuple[str, Any]]) -> dict:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise error(f"{where}: key {key!r} appears twice in one object; give it once")
            seen[key] = value
        return seen

    return hook


def read_json(path: str | Path, error: Error = ValueError) -> Any:
    """A regular JSON file with no repeated key in any object; unreadable or invalid JSON is one line."""
    path = regular_file(path, error=error)
    try:
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=unique_keys(str(path), error))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path}: not valid JSON (truncated?): {err}") from err


def read_json_object(path: str | Path, error: Error = ValueError, missing: str = " is missing") -> dict:
    """:func:`read_json` of a file that must hold one JSON object; a missing file is ``f"{path}{missing}"``."""
    try:
        found = read_json(path, error)
    except FileNotFoundError as err:
        raise error(f"{path}{missing}") from err
    if not isinstance(found, dict):
        raise error(f"{path} is corrupt: expected a JSON object")
    return found


def first_repeat(values: list) -> Any | None:
    """The first value that occurs a second time in ``values`` (None when all differ)."""
    seen: set = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None
