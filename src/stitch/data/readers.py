"""Readers for the layouts people bring: Flickr8k-style npz, AML-2025 npz, torch ``.pt`` dicts, ``.npy``.

Every reader returns a validated :class:`PairedEmbeddings` (train files) or :class:`Queries`
(query-only files). Nothing is unpickled: npz files load with ``allow_pickle=False`` and ``.pt``
files with ``torch.load(weights_only=True)`` allowing numpy arrays only. Which reader a path goes to —
these, a folder or an on-disk layout — is decided in one table, :mod:`stitch.data.formats`.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from stitch.data.dataset import DataError, PairedEmbeddings, Queries
from stitch.data.formats import detect_format, open_format
from stitch.data.npy import read_npy
from stitch.data.pairs import Pairs
from stitch.data.relevance import Relevance
from stitch.io.untrusted import regular_file

FLICKR_KEYS = ("captions/embeddings", "images/embeddings", "captions/image_index")
AML_KEYS = ("captions/embeddings", "images/embeddings", "captions/label")
PT_KEYS = ("caption_embd", "img_embd", "caption2img_idx")
LABEL_CHUNK_ROWS = 4096


def _missing(path: Path, found: list[str], wanted: tuple[str, ...]) -> DataError:
    lacking = [k for k in wanted if k not in found]
    return DataError(f"{path}: missing key(s) {lacking}; keys found: {sorted(found)}")


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    regular_file(path, error=DataError)  # a FIFO would block np.load forever
    try:
        loaded = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable npz file (truncated or corrupt?): {err}") from err
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds one .npy array, not an npz archive of named arrays (np.savez writes one)")
    return loaded


def _member(npz: np.lib.npyio.NpzFile, path: Path, key: str) -> np.ndarray:
    try:
        return npz[key]
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as err:
        if "allow_pickle" in str(err):
            raise DataError(
                f"{path}: array {key!r} holds Python objects (pickled), which stitch never loads; save texts as "
                "numpy strings (np.array(values.tolist(), dtype=str))"
            ) from err
        raise DataError(f"{path}: array {key!r} cannot be read (truncated or corrupt?): {err}") from err


def _optional(npz: np.lib.npyio.NpzFile, path: Path, key: str) -> np.ndarray | None:
    return _member(npz, path, key) if key in npz.files else None


def labels_to_relevance(
    path: Path, key: str = "captions/label", chunk_rows: int = LABEL_CHUNK_ROWS, n_images: int | None = None
) -> Relevance:
    """Caption->image relevance from a dense 0/1 matrix stored in an npz, read in row chunks.

    The competition matrix is 125k x 25k bools (3.1 GB); streaming it row-chunk by row-chunk from the
    zip member keeps memory at ``chunk_rows x n_images`` instead of a full copy. A row may mark several
    images (all relevant); a row marking none is an error.
    """
    with zipfile.ZipFile(path) as archive:
        name = key + ".npy"
        if name not in archive.namelist():
            raise DataError(f"{path}: no array {key!r}")
        with archive.open(name) as stream:
            shape, fortran, dtype = _label_header(stream, path, key, n_images)
            rows, cols = shape
            if fortran:  # column-major: rows are not contiguous, so read it whole
                matrix = _read_exact(stream, rows * cols * dtype.itemsize, path, key)
                return _marked(np.frombuffer(matrix, dtype=dtype).reshape(shape, order="F"), 0, path)
            blocks = []
            for start in range(0, rows, chunk_rows):
                n = min(chunk_rows, rows - start)
                raw = _read_exact(stream, n * cols * dtype.itemsize, path, key)
                blocks.append(_marked(np.frombuffer(raw, dtype=dtype).reshape(n, cols), start, path))
    counts = np.concatenate([b.counts for b in blocks])
    return Relevance.from_counts(counts, np.concatenate([b.items for b in blocks]), cols)


def _label_header(stream, path: Path, key: str, n_images: int | None) -> tuple:
    try:
        version = np.lib.format.read_magic(stream)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(stream)
    except ValueError as err:
        raise DataError(f"{path}: {key!r} has a corrupt header: {err}") from err
    if len(shape) != 2:
        raise DataError(f"{path}: {key!r} must be a 2-D captions x images matrix, got {shape}")
    if dtype.hasobject:
        raise DataError(f"{path}: {key!r} holds Python objects; refusing to unpickle")
    if n_images is not None and shape[1] != n_images:
        raise DataError(f"{path}: {key!r} has {shape[1]} image columns but the file holds {n_images} images")
    if dtype.kind not in "biuf":
        raise DataError(f"{path}: {key!r} must hold 0/1 marks (bool or numbers), got dtype {dtype}")
    return shape, fortran, dtype


def _read_exact(stream, size: int, path: Path, key: str) -> bytes:
    try:
        raw = stream.read(size)
    except (EOFError, zipfile.BadZipFile, OSError, zlib.error) as err:
        raise DataError(f"{path}: {key!r} is truncated or corrupt: {err}") from err
    if len(raw) != size:
        raise DataError(f"{path}: {key!r} is truncated ({len(raw)} of {size} bytes)")
    return raw


def _marked(block: np.ndarray, offset: int, path: Path) -> Relevance:
    """The images each row of a 0/1 block marks (rows numbered from ``offset`` in messages)."""
    marks = (block == 0) | (block == 1)
    if not marks.all():
        row, col = (int(v[0]) for v in np.nonzero(~marks))
        raise DataError(
            f"{path}: captions/label row {offset + row} holds {block[row, col]!r} at column {col}; "
            "labels must be 0 or 1"
        )
    rows, cols = np.nonzero(block)
    counts = np.bincount(rows, minlength=len(block))
    empty = np.where(counts == 0)[0]
    if len(empty):
        raise DataError(
            f"{path}: captions/label row {offset + int(empty[0])} marks no image; every caption needs at least "
            f"one ({len(empty)} such row(s) in this chunk)"
        )
    return Relevance.from_counts(counts, cols, block.shape[1])


def read_flickr_npz(path: Path, **kwargs) -> PairedEmbeddings:
    npz = _open_npz(path)
    if not all(k in npz.files for k in FLICKR_KEYS):
        raise _missing(path, npz.files, FLICKR_KEYS)
    images = _member(npz, path, "images/embeddings")
    return PairedEmbeddings(
        captions=_member(npz, path, "captions/embeddings"),
        images=images,
        caption_image=_member(npz, path, "captions/image_index"),
        relevance=_npz_relevance(npz, path, len(images)),
        caption_ids=_optional(npz, path, "captions/ids"),
        caption_texts=_optional(npz, path, "captions/text"),
        image_names=_optional(npz, path, "images/names"),
        image_split=_optional(npz, path, "images/split"),
        encoders=_encoders(npz, path),
        **kwargs,
    )


def _npz_relevance(npz: np.lib.npyio.NpzFile, path: Path, n_images: int) -> Relevance | None:
    """``relevance/indptr`` + ``relevance/items`` (+ ``relevance/grades``): every image a caption is relevant to."""
    if "relevance/indptr" not in npz.files:
        return None
    if "relevance/items" not in npz.files:
        raise _missing(path, npz.files, ("relevance/indptr", "relevance/items"))
    indptr, items = _member(npz, path, "relevance/indptr"), _member(npz, path, "relevance/items")
    return _relevance(path, indptr, items, _optional(npz, path, "relevance/grades"), n_images)


def _relevance(path: Path, indptr, items, grades, n_images: int) -> Relevance:
    """The relation a file stores, its errors naming the file."""
    try:
        return Relevance(indptr, items, n_images, grades)
    except DataError as err:
        raise DataError(f"{path}: {err}") from err


def _encoders(npz: np.lib.npyio.NpzFile, path: Path) -> dict:
    found = {}
    for side in ("text", "image"):
        key = f"meta/{side}_encoder"
        if key in npz.files:
            found[side] = str(_member(npz, path, key))
    return found


def read_aml_npz(path: Path, **kwargs) -> PairedEmbeddings:
    npz = _open_npz(path)
    if not all(k in npz.files for k in AML_KEYS):
        raise _missing(path, npz.files, AML_KEYS)
    captions = _member(npz, path, "captions/embeddings")
    images = _member(npz, path, "images/embeddings")
    relevance = labels_to_relevance(path, n_images=len(images))
    return PairedEmbeddings(
        captions=captions,
        images=images,
        caption_image=relevance.first_items,  # the first marked image of each caption
        relevance=relevance,
        caption_texts=_optional(npz, path, "captions/text"),
        image_names=_optional(npz, path, "images/names"),
        image_split=_optional(npz, path, "images/split"),
        **kwargs,
    )


def _load_pt(path: Path) -> dict:
    import torch

    if not path.exists():
        raise DataError(f"{path}: no such file")
    allowed = [np._core.multiarray._reconstruct, np.ndarray, np.dtype]
    allowed += [type(np.dtype(code)) for code in ("f4", "f8", "i8", "i4", "U1", "b1")]
    try:
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or unsafe files
        raise DataError(
            f"{path}: cannot be loaded safely as a tensor dict (truncated or not weights-only?): {err}"
        ) from err
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return obj


def _as_numpy(value, key: str = "") -> np.ndarray:
    """A tensor or array from a ``.pt`` dict as numpy: dense, on a real device; reduced precisions
    (bf16, float16, float8) are widened to float32 rather than failing numpy's conversion."""
    import torch

    if not isinstance(value, torch.Tensor):
        return np.asarray(value)
    if value.layout != torch.strided:
        raise DataError(f"{key!r} is a {value.layout} tensor; save it dense (tensor.to_dense())")
    if value.is_meta:
        raise DataError(f"{key!r} is a meta tensor: it holds no values")
    if value.is_floating_point() and value.dtype not in (torch.float32, torch.float64):
        value = value.float()
    if value.is_complex():
        raise DataError(f"{key!r} holds complex numbers ({value.dtype})")
    return value.numpy()


def read_pt(path: Path, **kwargs) -> PairedEmbeddings:
    obj = _load_pt(path)
    if not all(k in obj for k in PT_KEYS):
        raise _missing(path, list(obj), PT_KEYS)
    optional = {k: _as_numpy(obj[k], k) if k in obj else None for k in ("captions_text", "img_file")}
    images = _as_numpy(obj["img_embd"], "img_embd")
    return PairedEmbeddings(
        captions=_as_numpy(obj["caption_embd"], "caption_embd"),
        images=images,
        relevance=_pt_relevance(obj, path, len(images)),
        caption_image=_as_numpy(obj["caption2img_idx"], "caption2img_idx"),
        caption_texts=optional["captions_text"],
        image_names=optional["img_file"],
        **kwargs,
    )


def _pt_relevance(obj: dict, path: Path, n_images: int) -> Relevance | None:
    """``relevance_indptr`` + ``relevance_items`` (+ ``relevance_grades``): every image a caption is relevant to."""
    if "relevance_indptr" not in obj:
        return None
    if "relevance_items" not in obj:
        raise _missing(path, list(obj), ("relevance_indptr", "relevance_items"))
    indptr, items = _as_numpy(obj["relevance_indptr"], "relevance_indptr"), _as_numpy(obj["relevance_items"])
    grades = _as_numpy(obj["relevance_grades"]) if "relevance_grades" in obj else None
    return _relevance(path, indptr, items, grades, n_images)


def read_npy_triplet(captions: Path, images: Path, index: Path, **kwargs) -> PairedEmbeddings:
    return PairedEmbeddings(
        captions=read_npy(Path(captions)), images=read_npy(Path(images)), caption_image=read_npy(Path(index)), **kwargs
    )


def is_pt(path: Path) -> bool:
    """A torch ``.pt`` file (by its name; :func:`read_pt` checks what it holds)."""
    return path.suffix == ".pt"


def is_flickr_npz(path: Path) -> bool:
    """An npz holding Flickr8k-style pairs (:data:`FLICKR_KEYS`)."""
    return path.suffix == ".npz" and all(k in _npz_keys(path) for k in FLICKR_KEYS)


def is_aml_npz(path: Path) -> bool:
    """An npz holding an AML-2025 ``captions/label`` matrix."""
    return path.suffix == ".npz" and "captions/label" in _npz_keys(path)


def _npz_keys(path: Path) -> list[str]:
    with _open_npz(path) as npz:
        return npz.files


def load_pairs(path: str | Path, **kwargs) -> Pairs:
    """Read a paired (train-style) file or open a folder, whichever of :data:`stitch.data.formats.FORMATS`
    it is: an npz recognised from its keys, a ``.pt`` dict, a query/item folder (read into memory), a stitch
    sharded folder or an on-disk layout (memory-mapped, read on demand)."""
    path = Path(path)
    name = detect_format(path)
    if name is None:
        raise _unrecognised(path)
    return open_format(name, path, **kwargs)


def _unrecognised(path: Path) -> DataError:
    if path.suffix != ".npz":
        return DataError(f"{path}: unknown format; expected .npz or .pt (or pass three .npy files)")
    keys = _npz_keys(path)
    return DataError(
        f"{path}: not a paired file; need {list(FLICKR_KEYS)} or {list(AML_KEYS)}; keys found: {sorted(keys)}"
    )


def load_queries(path: str | Path) -> Queries:
    """Read the caption side of any supported file (a test file or a paired file)."""
    path = Path(path)
    if path.suffix == ".npy":
        return Queries(read_npy(path))
    if path.suffix == ".pt":
        obj = _load_pt(path)
        if "caption_embd" not in obj:
            raise _missing(path, list(obj), ("caption_embd",))
        texts = _as_numpy(obj["captions_text"]) if "captions_text" in obj else None
        ids = _as_numpy(obj["caption_ids"]) if "caption_ids" in obj else None
        return Queries(_as_numpy(obj["caption_embd"], "caption_embd"), ids=ids, texts=texts)
    if path.suffix != ".npz":
        raise DataError(f"{path}: unknown format; expected .npz, .pt or .npy")
    npz = _open_npz(path)
    if "captions/embeddings" not in npz.files:
        raise _missing(path, npz.files, ("captions/embeddings",))
    return Queries(
        _member(npz, path, "captions/embeddings"),
        ids=_optional(npz, path, "captions/ids"),
        texts=_optional(npz, path, "captions/text"),
    )
