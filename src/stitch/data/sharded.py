"""Pairs that stay on disk: stitch's sharded layout, opened memory-mapped, and its writer.

A folder holds ``stitch-shards.json`` (dimensions, dtype, encoders, each shard's sizes) and per shard
``NNNNN.captions.npy`` / ``NNNNN.images.npy`` (float16 or float32), ``NNNNN.caption_image.npy`` (local
image row of each caption) and optional string columns (``caption_ids``, ``caption_texts``,
``image_names``, ``image_split``). A shard holds whole images: every caption of an image is in the
image's shard, so a split by image never cuts a shard's caption from its image.

Opening checks every shard's shapes, dimensions and index ranges (cheap: the embeddings are not read);
values are checked for NaN/Inf when written and again whenever a batch or a dev set reads them, with the
shard and row named. ``stitch convert`` writes this layout from any supported one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from stitch.data.dataset import PairedEmbeddings
from stitch.data.errors import DataError, describe_rows
from stitch.data.holdout import image_holdout
from stitch.data.npy import read_npy
from stitch.data.shards import CHUNK_ROWS, Shard, ShardList, read_checked
from stitch.data.texts import OFFSETS, UTF8, OffsetTexts, as_texts, write_texts
from stitch.io.atomic import current_umask, disk_full, is_disk_full
from stitch.io.progress import chunk_starts
from stitch.io.untrusted import first_repeat, inside, read_json

logger = logging.getLogger(__name__)

MANIFEST = "stitch-shards.json"
FORMAT = "stitch-shards"
VERSION = 2  # 2: text columns as offsets + UTF-8 bytes (1: fixed-width numpy strings)
READ_VERSIONS = (1, 2)
TEXT_COLUMNS = ("caption_ids", "caption_texts")
IMAGE_COLUMNS = ("image_names", "image_split")
DTYPES = ("float16", "float32")


@dataclass
class ShardedPairs:
    """Paired embeddings as shards (memory-mapped when read from disk); splits and dev sets read only what
    they need. Optional per-shard columns live in ``columns[name][shard]``."""

    shards: list[Shard]
    columns: dict[str, list[np.ndarray]] = field(default_factory=dict)
    encoders: dict = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        if not self.shards:
            raise DataError(f"{self.source or 'the data'}: no shards")
        offsets = np.concatenate([[0], np.cumsum([len(s.images) for s in self.shards])[:-1]])
        self.shards = [replace(s, image_offset=int(o)) for s, o in zip(self.shards, offsets)]
        for k, shard in enumerate(self.shards):
            check_shard(shard, self.shards[0], f"{self.source} shard {k} ({shard.name})")
        for name, values in self.columns.items():
            for k, (shard, column) in enumerate(zip(self.shards, values)):
                want = len(shard.captions) if name in TEXT_COLUMNS else len(shard.images)
                if len(column) != want:
                    raise DataError(f"{self.source} shard {k}: column {name} has {len(column)} rows, expected {want}")

    @classmethod
    def of(cls, data: PairedEmbeddings | ShardedPairs, source: str = "") -> ShardedPairs:
        """Any pairs as shards: sharded data itself, in-memory pairs as one shard (what ``stitch convert``
        writes out from an npz or ``.pt`` file)."""
        if isinstance(data, ShardedPairs):
            return data
        if data.relevance is not None:
            raise DataError(
                f"{source or 'the data'} relates captions to several images; the sharded layout holds one image "
                "per caption, so keep many-to-many data in an npz (relevance/*) file"
            )
        named = {k: getattr(data, k) for k in TEXT_COLUMNS + IMAGE_COLUMNS}
        columns = {k: [v] for k, v in named.items() if v is not None}
        return cls([Shard(data.captions, data.images, data.caption_image)], columns, dict(data.encoders), source)

    @property
    def n_captions(self) -> int:
        return sum(len(s.captions) for s in self.shards)

    @property
    def n_images(self) -> int:
        return sum(len(s.images) for s in self.shards)

    @property
    def text_dim(self) -> int:
        return self.shards[0].captions.shape[1]

    @property
    def image_dim(self) -> int:
        return self.shards[0].images.shape[1]

    def split_names(self) -> list[str]:
        values = self.columns.get("image_split")
        return [] if values is None else sorted(set().union(*(set(np.unique(v).tolist()) for v in values)))

    def holdout(
        self, dev_fraction: float = 0.1, seed: int = 0, max_dev_images: int = 0
    ) -> tuple[ShardList, PairedEmbeddings, str]:
        """Train view (read on demand) and the dev images with their captions in memory, split by image
        exactly as the same pairs in memory would be (:func:`stitch.data.holdout.image_holdout`)."""
        train_rows, dev_rows, how = self.holdout_rows(dev_fraction, seed, max_dev_images)
        train = np.zeros(self.n_images, bool)
        train[train_rows] = True
        return self.view(train), self.take_images(dev_rows), how

    def holdout_rows(
        self, dev_fraction: float = 0.1, seed: int = 0, max_dev_images: int = 0
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """Train and dev image rows (global ids) of :meth:`holdout`, as the same pairs in memory give them."""
        split = np.concatenate(self.columns["image_split"]) if "image_split" in self.columns else None
        return image_holdout(split, self.n_images, dev_fraction, seed, max_dev_images)

    def take_images(self, image_rows: np.ndarray) -> PairedEmbeddings:
        """These image rows (global ids) with all their captions, read into memory."""
        mask = np.zeros(self.n_images, bool)
        mask[image_rows] = True
        return self.gather(mask)

    def view(self, image_mask: np.ndarray) -> ShardList:
        """The images marked in ``image_mask`` (global ids) and their captions, read on demand."""
        views = []
        for shard in self.shards:
            mine = image_mask[shard.image_offset : shard.image_offset + len(shard.images)]
            rows = np.flatnonzero(mine[np.asarray(shard.caption_image)]).astype(_index_dtype(len(shard.captions)))
            views.append(shard.view(rows, np.flatnonzero(mine).astype(_index_dtype(len(shard.images)))))
        return ShardList(views)

    def gather(self, image_mask: np.ndarray) -> PairedEmbeddings:
        """The marked images and all their captions as an in-memory :class:`PairedEmbeddings`."""
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("captions", "images", "caption_image")}
        extra: dict[str, list[np.ndarray]] = {k: [] for k in self.columns}
        taken = 0
        for k, shard in enumerate(self.shards):
            images = np.flatnonzero(image_mask[shard.image_offset : shard.image_offset + len(shard.images)])
            if not len(images):
                continue
            remap = np.full(len(shard.images), -1, dtype=np.int64)
            remap[images] = np.arange(len(images)) + taken
            rows = np.flatnonzero(remap[np.asarray(shard.caption_image)] >= 0)
            where = f"{self.source} shard {k} ({shard.name})"
            parts["captions"].append(read_checked(shard.captions, rows, f"{where} captions"))
            parts["images"].append(read_checked(shard.images, images, f"{where} images"))
            parts["caption_image"].append(remap[np.asarray(shard.caption_image)[rows]])
            for name, values in self.columns.items():
                extra[name].append(np.asarray(values[k][rows if name in TEXT_COLUMNS else images]))
            taken += len(images)
        if not taken:
            raise DataError(f"{self.source}: the selection holds no images")
        joined = {k: np.concatenate(v) for k, v in {**parts, **extra}.items()}
        return PairedEmbeddings(**joined, encoders=dict(self.encoders), allow_images_without_captions=True)

    def image_shards(self) -> tuple[list[Shard], dict[str, list[np.ndarray]], str]:
        """``(shards, per-shard columns, source)``: the images as a gallery read shard by shard."""
        return self.shards, self.columns, self.source

    def select(self, split: str | None = None) -> PairedEmbeddings:
        """The images of split ``split`` (all when None) with their captions, read into memory."""
        if split is None:
            return self.to_memory()
        if split not in self.split_names():
            raise DataError(f"split {split!r} not found; the data has {self.split_names()}")
        return self.gather(np.concatenate(self.columns["image_split"]) == split)

    @property
    def in_memory(self) -> bool:
        """Rows are read from disk on demand (see :class:`stitch.data.pairs.Pairs`)."""
        return False

    def to_memory(self) -> PairedEmbeddings:
        """Every pair in RAM (float32): for data that fits, or to evaluate a whole file."""
        return self.gather(np.ones(self.n_images, dtype=bool))


def _index_dtype(n: int) -> type:
    return np.int32 if n < 2**31 else np.int64


def check_shard(shard: Shard, first: Shard, where: str) -> None:
    """Shapes, dtypes, dimensions (against the first shard) and index ranges, without reading embeddings."""
    for name, matrix in (("captions", shard.captions), ("images", shard.images)):
        if matrix.ndim != 2 or 0 in matrix.shape[1:]:
            raise DataError(f"{where}: {name} must be a rows x dims matrix, got shape {matrix.shape}")
        if matrix.dtype.kind != "f":
            raise DataError(f"{where}: {name} must be floating point (float16/float32), got {matrix.dtype}")
    for name, a, b in (("text", shard.captions, first.captions), ("image", shard.images, first.images)):
        if a.shape[1] != b.shape[1]:
            raise DataError(f"{where}: {name} dimension {a.shape[1]} differs from the first shard's {b.shape[1]}")
    owner = np.asarray(shard.caption_image)
    if owner.shape != (len(shard.captions),) or owner.dtype.kind not in "iu":
        raise DataError(
            f"{where}: caption->image index must be {len(shard.captions)} integers (one per caption), "
            f"got {owner.dtype} {owner.shape}"
        )
    bad = np.flatnonzero((owner < 0) | (owner >= len(shard.images)))
    if len(bad):
        raise DataError(f"{where}: caption->image index out of range [0, {len(shard.images)}) in {describe_rows(bad)}")


def is_sharded_folder(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).exists()


def open_sharded(path: str | Path) -> ShardedPairs:
    """Open a stitch sharded folder memory-mapped (nothing but the small index arrays is read)."""
    path = Path(path)
    manifest = _read_manifest(path)
    _check_no_unlisted_shards(path, manifest)
    shards, columns = [], {}
    for entry in manifest["shards"]:
        name = entry["name"]
        captions = _open_npy(path, f"{name}.captions.npy", mmap=True)
        images = _open_npy(path, f"{name}.images.npy", mmap=True)
        for label, matrix in (("captions", captions), ("images", images)):
            want = entry[label]
            if len(matrix) != want:
                raise DataError(
                    f"{path}: shard {name} {label} has {len(matrix)} rows but the manifest says {want} "
                    "(truncated or replaced?)"
                )
        owner = _open_npy(path, f"{name}.caption_image.npy", mmap=True)
        shards.append(Shard(captions, images, owner, name=name))
        for column in manifest["columns"]:
            rows = entry["captions"] if column in TEXT_COLUMNS else entry["images"]
            columns.setdefault(column, []).append(_open_column(path, name, column, rows, manifest["version"]))
    return ShardedPairs(shards, columns, dict(manifest["encoders"]), source=str(path))


def _check_no_unlisted_shards(path: Path, manifest: dict) -> None:
    """A shard's files in the folder that the manifest does not list would drop its pairs without a word
    (a manifest edited, or copied from a smaller folder): refused, naming them."""
    listed = set(_written_names(manifest))
    unlisted = sorted(
        p.name
        for p in path.iterdir()
        if p.name.endswith((".captions.npy", ".images.npy", ".caption_image.npy")) and p.name not in listed
    )
    if unlisted:
        shown = ", ".join(unlisted[:3]) + (f" (+{len(unlisted) - 3} more)" if len(unlisted) > 3 else "")
        raise DataError(
            f"{path}/{MANIFEST} does not list shard files the folder holds ({shown}); their pairs would be "
            "left out: restore the manifest or remove those files"
        )


def _read_manifest(path: Path) -> dict:
    """The manifest, checked against the schema the writer follows: a value of the wrong type, an unknown
    column or a shard listed twice (which would count its pairs twice) is refused, naming the entry."""
    where = f"{path}/{MANIFEST}"
    try:
        manifest = read_json(path / MANIFEST, DataError)
    except FileNotFoundError as err:
        raise DataError(f"{path}: no {MANIFEST}; not a stitch sharded folder (stitch convert writes one)") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{where} is not a {FORMAT} manifest")
    if manifest.get("version") not in READ_VERSIONS:
        raise DataError(
            f"{path}: layout version {manifest.get('version')!r}; this stitch reads versions {list(READ_VERSIONS)}"
        )
    if not isinstance(manifest.get("shards"), list) or not manifest["shards"]:
        raise DataError(f"{where} lists no shards")
    names = [_shard_entry(entry, where, k) for k, entry in enumerate(manifest["shards"])]
    repeated = first_repeat(names)
    if repeated is not None:
        raise DataError(f"{where}: shard {repeated!r} is listed twice; each shard may appear once")
    columns = manifest.setdefault("columns", [])
    known = TEXT_COLUMNS + IMAGE_COLUMNS
    if not isinstance(columns, list) or not all(isinstance(c, str) and c in known for c in columns):
        raise DataError(f"{where}: columns must be a list drawn from {list(known)}, got {columns!r}")
    if first_repeat(columns) is not None:
        raise DataError(f"{where}: column {first_repeat(columns)!r} is listed twice")
    if not isinstance(manifest.setdefault("encoders", {}), dict):
        raise DataError(f"{where}: encoders must be a JSON object, got {manifest['encoders']!r}")
    return manifest


def _shard_entry(entry: object, where: str, k: int) -> str:
    """A shard entry's name after checking its fields (name: letters and digits; sizes: whole numbers)."""
    name = entry.get("name") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name.isalnum():
        raise DataError(f"{where}: shard {k} has no valid name (letters and digits only), got {name!r}")
    for label in ("captions", "images"):
        value = entry.get(label)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DataError(f"{where}: shard {name} {label} must be a whole number of rows, got {value!r}")
    return name


def _open_npy(folder: Path, name: str, mmap: bool) -> np.ndarray:
    file = inside(folder, name, f"{folder}/{MANIFEST}", DataError)
    if not file.exists():
        raise DataError(f"{folder / name}: missing (the manifest lists it)")
    return read_npy(file, mmap)


def _column_files(column: str, version: int) -> list[str]:
    """The files of a shard's text column after its ``NNNNN.`` prefix: Arrow-style offsets and UTF-8 bytes
    (version 2), or one numpy string array (version 1 folders, still read)."""
    return [f"{column}.npy"] if version == 1 else [f"{column}.{OFFSETS}", f"{column}.{UTF8}"]


def _open_column(folder: Path, name: str, column: str, rows: int, version: int) -> np.ndarray | OffsetTexts:
    """A text column of shard ``name``, each file opened inside the folder, memory-mapped."""
    arrays = [_open_npy(folder, f"{name}.{file}", mmap=True) for file in _column_files(column, version)]
    if version == 1:
        return arrays[0]
    return OffsetTexts.checked(*arrays, folder / f"{name}.{_column_files(column, version)[0]}", rows)


def write_sharded(
    data: ShardedPairs, out: str | Path, shard_rows: int = 262_144, dtype: str = "float16", force: bool = False
) -> Path:
    """Write ``data`` in stitch's layout: whole images per shard, about ``shard_rows`` captions each, every
    value checked finite. The folder appears only when complete; an existing one is replaced only with
    ``force``."""
    out = Path(out)
    if dtype not in DTYPES:
        raise DataError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    ours = _check_replaceable(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    needed = _bytes_needed(data, dtype)
    if shutil.disk_usage(out.parent).free < needed:
        raise disk_full(out, f"at least {needed:,} bytes needed")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        try:
            blocks = enumerate(_blocks(data, shard_rows))
            entries = [_write_block(data, tmp, n, block, dtype) for n, block in blocks]
        except OSError as err:
            if is_disk_full(err):
                raise disk_full(out, f"at least {needed:,} bytes needed") from err
            raise
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "text_dim": data.text_dim,
            "image_dim": data.image_dim,
            "dtype": dtype,
            "encoders": data.encoders,
            "columns": sorted(data.columns),
            "shards": entries,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp made it private; the output gets the user's umask
        _move_into_place(tmp, out, ours)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _bytes_needed(data: ShardedPairs, dtype: str) -> int:
    """The embeddings and caption index the folder will hold (texts, a few bytes a row, not counted)."""
    size = np.dtype(dtype).itemsize
    return data.n_captions * (data.text_dim * size + 8) + data.n_images * data.image_dim * size


def _check_replaceable(out: Path, force: bool) -> list[str]:
    """Before any work: an existing output is replaced only with ``force``, and only if it is empty or a
    folder stitch wrote: a manifest that validates and nothing beside the files it names. Returns the names
    that may be removed (the manifest's files and the manifest itself), never anything else."""
    if not out.exists():
        return []
    if not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    if not out.is_dir() or out.is_symlink():
        raise FileExistsError(f"{out} is a file, not a sharded folder; refusing to replace it")
    present = sorted(p.name for p in out.iterdir())
    if not present:
        return []
    if MANIFEST not in present:
        raise FileExistsError(f"{out} is a folder but not a stitch sharded folder; refusing to replace it")
    try:
        manifest = _read_manifest(out)
    except DataError as err:
        raise FileExistsError(f"{out}: its {MANIFEST} does not validate ({err}); refusing to replace it") from err
    ours = set(_written_names(manifest))
    foreign = [name for name in present if name not in ours or not _plain_file(out / name)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else "")
        raise FileExistsError(
            f"{out} holds files stitch did not write ({shown}); give an empty or stitch-written folder"
        )
    return present


def _plain_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _written_names(manifest: dict) -> list[str]:
    """Every file the writer puts in a folder with this (validated) manifest, the manifest included."""
    files = ["captions.npy", "images.npy", "caption_image.npy"]
    files += [file for column in manifest["columns"] for file in _column_files(column, manifest["version"])]
    return [MANIFEST] + [f"{entry['name']}.{file}" for entry in manifest["shards"] for file in files]


def _move_into_place(tmp: Path, out: Path, ours: list[str]) -> None:
    """The finished folder takes ``out``'s name; an old one is moved aside first and emptied only after, so a
    failure at any point leaves one complete copy. Only the names in ``ours`` are removed from the old one:
    a file that appeared since the check is kept (the old folder is then left under its hidden name)."""
    if not out.exists():
        tmp.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        old.rename(out)
        raise
    for name in ours:
        (old / name).unlink(missing_ok=True)
    try:
        old.rmdir()
    except OSError:
        logger.warning("%s: kept the old folder, which holds files stitch did not write", old)


@dataclass
class _Piece:
    """A contiguous image range of one input shard and its captions (ordered by image, stable)."""

    shard: int
    images: np.ndarray
    rows: np.ndarray


def _blocks(data: ShardedPairs, shard_rows: int) -> Iterator[list[_Piece]]:
    """Output shards of at most ``shard_rows`` captions (at least one image each), packed from consecutive
    image ranges across input shards, so small input files merge and the pairs keep their order."""
    block: list[_Piece] = []
    size = 0
    for k, shard in enumerate(data.shards):
        owner = np.asarray(shard.caption_image, dtype=np.int64)
        order = np.argsort(owner, kind="stable")
        ends = np.searchsorted(owner[order], np.arange(len(shard.images)), side="right")  # captions of images <= i
        start_image, start_row = 0, 0
        while start_image < len(shard.images):
            stop = int(np.searchsorted(ends, start_row + shard_rows - size, side="right"))
            if stop <= start_image and block:  # the next image does not fit: close this shard
                yield block
                block, size = [], 0
                continue
            stop = max(stop, start_image + 1)
            end_row = int(ends[stop - 1])
            block.append(_Piece(k, np.arange(start_image, stop), order[start_row:end_row]))
            size += end_row - start_row
            start_image, start_row = stop, end_row
            if size >= shard_rows:
                yield block
                block, size = [], 0
    if block:
        yield block


def _write_block(data: ShardedPairs, folder: Path, number: int, block: list[_Piece], dtype: str) -> dict:
    name, where = f"{number:05d}", f"{data.source} shard"
    captions = [(data.shards[p.shard].captions, p.rows, f"{where} {p.shard} captions") for p in block]
    images = [(data.shards[p.shard].images, p.images, f"{where} {p.shard} images") for p in block]
    _copy_rows(captions, folder, f"{name}.captions.npy", dtype)
    _copy_rows(images, folder, f"{name}.images.npy", dtype)
    firsts = np.cumsum([0] + [len(p.images) for p in block])
    owner = np.concatenate(
        [
            np.asarray(data.shards[p.shard].caption_image, dtype=np.int64)[p.rows] - p.images[0] + first
            for p, first in zip(block, firsts)
        ]  # fmt: skip
    )
    _save(folder, f"{name}.caption_image.npy", owner.astype(_index_dtype(int(firsts[-1]))))
    for column, values in data.columns.items():
        parts = [np.asarray(values[p.shard][p.rows if column in TEXT_COLUMNS else p.images]) for p in block]
        write_texts(folder, f"{name}.{column}", np.concatenate([as_texts(part, column) for part in parts]))
    return {"name": name, "captions": len(owner), "images": int(firsts[-1])}


def _save(folder: Path, name: str, values: np.ndarray) -> None:
    with open(folder / name, "wb") as handle:
        np.save(handle, values, allow_pickle=False)


def _reserve(path: Path) -> None:
    """Give the (sparse) memory-mapped file its blocks now: a disk that fills while pages are written kills
    the process with SIGBUS, where reserving fails with an OSError that can be reported and cleaned up."""
    if not hasattr(os, "posix_fallocate"):  # Windows and macOS: no reservation call; their writes fail plainly
        return
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, os.path.getsize(path))
        except OSError as err:
            if is_disk_full(err):
                raise
            # filesystems without allocation support (EOPNOTSUPP, EINVAL) write as before


def _copy_rows(pieces: list[tuple[np.ndarray, np.ndarray, str]], folder: Path, name: str, dtype: str) -> None:
    """``source[rows]`` of every piece, one after another, written as ``dtype`` chunk by chunk (memory stays at
    one chunk), checked finite."""
    total, width = sum(len(rows) for _, rows, _ in pieces), pieces[0][0].shape[1]
    target = np.lib.format.open_memmap(folder / name, mode="w+", dtype=dtype, shape=(total, width))
    _reserve(folder / name)
    at = 0
    for source, rows, where in pieces:
        for start in chunk_starts(len(rows), CHUNK_ROWS, f"writing {name}"):
            picked = rows[start : start + CHUNK_ROWS]
            values = read_checked(source, picked, where)
            if dtype == "float16" and np.abs(values).max(initial=0) > np.finfo(np.float16).max:
                raise DataError(f"{where} has values beyond float16's range; convert with --dtype float32")
            target[at : at + len(picked)] = values
            at += len(picked)
    target.flush()
    del target
