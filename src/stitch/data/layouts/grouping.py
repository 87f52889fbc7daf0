"""From rows to shards, the same for every layout: rows sharing an image key become one image, files agree
on dimensions, no key spans two files, and a key column that cannot be right (out of step with the
embeddings, naming captions rather than images, a split changing within an image) is refused by row.

One home for these checks, so that a clip-retrieval folder, a table and a ``datasets`` folder are held to
the same rules and a fix to one check reaches every layout.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from stitch.data.errors import DataError
from stitch.data.layouts.rows import Part
from stitch.data.sharded import ShardedPairs
from stitch.data.shards import Shard
from stitch.data.texts import TEXT

logger = logging.getLogger("stitch.data.layouts")  # the warnings' logger since before the readers were split


def assemble(parts: list[Part], source: Path) -> ShardedPairs:
    """Checked parts (one per file) as shards: rows sharing a key become one image, files agree on dimensions
    and no key spans two files."""
    parts = [p for p in parts if len(p.text)]
    if not parts:
        raise DataError(f"{source}: holds no rows")
    _check_dims(parts, source)
    _check_keys_apart(parts, source)
    if all(p.keys is None for p in parts):
        _warn_repeated_images(parts[0], source)
    shards, columns = [], {}
    for part in parts:
        shard, extra = _group(part, source)
        shards.append(shard)
        for column, values in extra.items():
            columns.setdefault(column, []).append(values)
    if "image_split" in columns and len(columns["image_split"]) != len(parts):
        lacking = next(p.name for p in parts if p.split is None)
        raise DataError(f"{source}: {lacking} has no split column while other files do; give every file one")
    if "caption_texts" in columns and len(columns["caption_texts"]) != len(parts):
        blank = [np.full(len(p.text), "", dtype=TEXT) for p in parts]
        columns["caption_texts"] = [p.captions if p.captions is not None else b for p, b in zip(parts, blank)]
    return ShardedPairs(shards, columns, {}, source=str(source))


REPEAT_SAMPLE = 4096  # rows of the first file checked for an image repeated row for row


def _warn_repeated_images(part: Part, source: Path) -> None:
    """Without a key every row is its own image; a file whose rows repeat one image embedding (several
    captions of a picture, a row each) would put identical copies of it in the gallery and score every
    caption wrong but one. A sample of the first rows is checked and the fix named."""
    sample = np.ascontiguousarray(np.asarray(part.image[:REPEAT_SAMPLE]))
    if len(sample) < 2:
        return
    rows = sample.view(np.dtype((np.void, sample.dtype.itemsize * sample.shape[1]))).ravel()
    repeated = len(rows) - len(np.unique(rows))
    if repeated:
        logger.warning(
            "%s: %s: %d of its first %d rows repeat an earlier row's image embedding, and without an image key "
            "every row is its own image (identical gallery copies, wrong metrics); pass --image-key COLUMN "
            "(image_key= in Python) naming the column that says which image a row shows",
            source,
            part.name,
            repeated,
            len(rows),
        )


def _check_dims(parts: list[Part], source: Path) -> None:
    first = parts[0]
    for part in parts[1:]:
        for side, mine, theirs in (("text", part.text, first.text), ("image", part.image, first.image)):
            if mine.shape[1] != theirs.shape[1]:
                raise DataError(
                    f"{source}: {part.name} has {side} dimension {mine.shape[1]} but {first.name} has "
                    f"{theirs.shape[1]}; every file must hold embeddings of the same encoders"
                )


def _check_keys_apart(parts: list[Part], source: Path) -> None:
    """A key in two files would put captions of one image in two shards (and on both sides of a split)."""
    keyed = [(k, np.unique(p.keys)) for k, p in enumerate(parts) if p.keys is not None]
    if not keyed:
        return
    keys = np.concatenate([u for _, u in keyed])
    owners = np.concatenate([np.full(len(u), k) for k, u in keyed])
    order = np.argsort(keys, kind="stable")
    shared = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if len(shared):
        at = shared[0]
        one, two = parts[owners[order[at]]].name, parts[owners[order[at + 1]]].name
        key = str(keys[order[at]])
        raise DataError(
            f"{source}: image key {key!r} appears in two shards, {one} and {two} ({len(shared)} key(s) shared "
            "across files); all captions of an image must be in one file — regroup the rows by key"
        )


def _group(part: Part, source: Path) -> tuple[Shard, dict[str, np.ndarray]]:
    """The part as a shard: without keys each row is an image (zero-copy); with keys each key is one image,
    the first row's embedding, in order of first appearance (gathered into memory unless every key is new)."""
    n = len(part.text)
    if part.keys is None:
        owner = firsts = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
    else:
        _, first, inverse = np.unique(part.keys, return_index=True, return_inverse=True)
        order = np.argsort(first)
        rank = np.empty(len(first), dtype=np.int64)
        rank[order] = np.arange(len(first))
        owner, firsts = rank[inverse.ravel()], first[order]
    images = part.image if len(firsts) == n else np.asarray(part.image[firsts])
    if len(firsts) < n:
        _check_grouping(part, owner, firsts, images)
    if part.keys is not None:
        _check_keys_name_images(part, source)
    extra = {}
    if part.captions is not None:
        extra["caption_texts"] = part.captions
    if part.keys is not None:
        extra["image_names"] = part.keys[firsts]
    if part.split is not None:
        extra["image_split"] = _image_split(part, owner, firsts, source)
    return Shard(part.text, images, owner, name=part.name), extra


GROUP_CHECK_ROWS = 65_536  # rows compared at a time with their group's first row


def _check_grouping(part: Part, owner: np.ndarray, firsts: np.ndarray, images: np.ndarray) -> None:
    """Rows that share an image key must hold that image's embedding: a key column out of step with the
    embeddings (metadata rotated by a row, a wrong key) would otherwise pair captions with the wrong image."""
    for start in range(0, len(owner), GROUP_CHECK_ROWS):
        rows = np.arange(start, min(start + GROUP_CHECK_ROWS, len(owner)))
        differ = ~np.all(np.asarray(part.image[rows]) == images[owner[rows]], axis=1)
        if differ.any():
            row = int(rows[np.flatnonzero(differ)[0]])
            first = int(firsts[owner[row]])
            raise DataError(
                f"{part.name}: rows {first} and {row} share image key {str(part.keys[row])!r} but hold different "
                f"image embeddings ({int(differ.sum())} such row(s) in rows {start}-{rows[-1]}): the key column "
                "is out of step with the embeddings, or names something other than the image"
            )


PER_CAPTION_SHARE = 0.25  # rows repeating the previous row's image under a new key, above which keys are per caption


def _check_keys_name_images(part: Part, source: Path) -> None:
    """A key column that names captions, not images (a caption id, a row number) makes each caption its own
    image: identical gallery copies and wrong metrics. Its sign, checked on the first rows: consecutive rows
    with the same image embedding under different keys (duplicate photos under two names are rare and
    scattered, not row after row)."""
    sample = np.asarray(part.image[:REPEAT_SAMPLE])
    if len(sample) < 4:
        return
    keys = part.keys[: len(sample)]
    repeats = np.flatnonzero(np.all(sample[1:] == sample[:-1], axis=1) & (keys[1:] != keys[:-1])) + 1
    if len(repeats) >= PER_CAPTION_SHARE * len(sample):
        row = int(repeats[0])
        raise DataError(
            f"{source}: {part.name}: rows {row - 1} and {row} hold the same image embedding under keys "
            f"{str(keys[row - 1])!r} and {str(keys[row])!r} ({len(repeats)} of the first {len(sample)} rows do): "
            "the key column names captions, not images; pass --image-key naming the image column"
        )


def _image_split(part: Part, owner: np.ndarray, firsts: np.ndarray, source: Path) -> np.ndarray:
    split = part.split[firsts]
    bad = np.flatnonzero(split[owner] != part.split)
    if len(bad):
        row, first = int(bad[0]), int(firsts[owner[bad[0]]])
        key, was, now = (str(v) for v in (part.keys[row], part.split[first], part.split[row]))
        raise DataError(
            f"{source}: {part.name}: image {key!r} is in split {was!r} at row {first} but {now!r} at row {row} "
            f"({len(bad)} such row(s)); the split must be the same for every caption of an image"
        )
    return split
