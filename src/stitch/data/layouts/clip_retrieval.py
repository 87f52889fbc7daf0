"""The ``clip-retrieval`` layout: the folder clip-retrieval / img2dataset write — ``img_emb/img_emb_{i}.npy``,
``text_emb/text_emb_{i}.npy`` and ``metadata/metadata_{i}.parquet``, row-aligned, one image-caption pair a
row, each shard number one shard.

The ``.npy`` files are memory-mapped (float16 kept as float16); the metadata (keys, captions, split) is
read as any Parquet table is. Its own module because its file naming — numbered shards across three
folders that must agree — is what can go wrong here and nowhere else.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from stitch.data.errors import DataError
from stitch.data.layouts.arrow import labels, parquet_table
from stitch.data.layouts.grouping import assemble
from stitch.data.layouts.rows import Part, Spec
from stitch.data.npy import read_npy
from stitch.data.sharded import ShardedPairs

CLIP_FILES = {"img_emb": ("img_emb_", ".npy"), "text_emb": ("text_emb_", ".npy"), "metadata": ("metadata_", ".parquet")}


def is_clip_retrieval(path: Path) -> bool:
    """A folder with an ``img_emb/`` or ``text_emb/`` subfolder."""
    return path.is_dir() and ((path / "img_emb").is_dir() or (path / "text_emb").is_dir())


def open_clip_retrieval(
    folder: str | Path, text_column: str | None = None, image_column: str | None = None, **options
) -> ShardedPairs:
    """:func:`read_clip_retrieval` taking the options every layout takes: its embeddings are the ``.npy``
    files, so naming embedding columns is a mistake said out loud rather than ignored."""
    if text_column or image_column:
        raise DataError(
            f"{folder}: a clip-retrieval folder keeps embeddings in text_emb/ and img_emb/ .npy files; "
            "text_column/image_column do not apply"
        )
    return read_clip_retrieval(folder, **options)


def read_clip_retrieval(
    folder: str | Path,
    image_key: str | None = None,
    caption_column: str | None = "caption",
    split_column: str | None = "split",
) -> ShardedPairs:
    """A clip-retrieval / img2dataset embedding folder, each numbered shard memory-mapped. The metadata
    folder may be absent (no texts, no key); when present every shard needs its file."""
    folder = Path(folder)
    spec = Spec(image_key=image_key, caption_column=caption_column, split_column=split_column)
    return assemble([_clip_part(folder, i, files, spec) for i, files in _clip_files(folder)], folder)


def _numbered(folder: Path, prefix: str, suffix: str) -> dict[int, Path]:
    """Each shard number's file; two spellings of one number (``img_emb_2`` and ``img_emb_02``) are refused,
    since keeping either would silently drop the other's rows."""
    pattern = re.compile(rf"{re.escape(prefix)}(\d+){re.escape(suffix)}")
    if not folder.is_dir():
        return {}
    found: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        match = pattern.fullmatch(path.name)
        if not match:
            continue
        number = int(match.group(1))
        if number in found:
            raise DataError(f"{folder}: {found[number].name} and {path.name} are both shard {number}; keep one of them")
        found[number] = path
    return found


def _clip_files(folder: Path) -> list[tuple[int, dict[str, Path]]]:
    """Each shard number with its files, failing on a number some folder lacks."""
    found = {sub: _numbered(folder / sub, *pattern) for sub, pattern in CLIP_FILES.items()}
    if not (folder / "metadata").is_dir():
        del found["metadata"]
    if not found["img_emb"] and not found["text_emb"]:
        raise DataError(f"{folder}: no img_emb/img_emb_N.npy or text_emb/text_emb_N.npy files")
    numbers = sorted(set().union(*found.values()))
    for i in numbers:
        lacking = [sub for sub in found if i not in found[sub]]
        if lacking:
            missing = ", ".join(f"{sub}/{CLIP_FILES[sub][0]}{i}{CLIP_FILES[sub][1]}" for sub in lacking)
            held = "; ".join(f"{sub} has {_few(sorted(found[sub]))}" for sub in found)
            raise DataError(
                f"{folder}: shard {i}: {missing} missing; the {', '.join(found)} folders must hold the same "
                f"shard numbers ({held})"
            )
    return [(i, {sub: found[sub][i] for sub in found}) for i in numbers]


def _few(numbers: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(n) for n in numbers[:limit])
    return f"[{shown}{', ...' if len(numbers) > limit else ''}] ({len(numbers)})"


def _clip_part(folder: Path, i: int, files: dict[str, Path], spec: Spec) -> Part:
    text, image = _load_npy(files["text_emb"]), _load_npy(files["img_emb"])
    meta = parquet_table(files["metadata"], files["metadata"].name) if "metadata" in files else None
    counts = {f"text_emb/{files['text_emb'].name}": len(text), f"img_emb/{files['img_emb'].name}": len(image)}
    if meta is not None:
        counts[f"metadata/{meta.name}"] = meta.rows
    if len(set(counts.values())) != 1:
        said = ", ".join(f"{name} has {n}" for name, n in counts.items())
        raise DataError(f"{folder}: shard {i}: row counts differ ({said}); each row must be one image-caption pair")
    if meta is None and spec.image_key:
        raise DataError(f"{folder}: image_key={spec.image_key!r} needs the metadata/ folder, which is missing")
    keys, captions, split = labels(meta, spec) if meta is not None else (None, None, None)
    name = f"{files['img_emb'].name}+{files['text_emb'].name}"
    return Part(name, text, image, keys, captions, split)


def _load_npy(path: Path) -> np.ndarray:
    matrix = read_npy(path, mmap=True)
    if matrix.ndim != 2 or matrix.dtype.kind != "f":
        raise DataError(
            f"{path}: embeddings must be a rows x dims float16/float32 matrix, got {matrix.dtype} "
            f"of shape {matrix.shape}"
        )
    return matrix
