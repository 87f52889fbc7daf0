"""``stitch encode``: raw captions and pictures -> a stitch dataset (Flickr8k npz layout).

Work is done in chunks written to ``OUT.parts/``; an interrupted run resumes by skipping the chunks
already there. Images that cannot be decoded are skipped, listed in ``OUT.skipped.txt``, and their
captions dropped. The npz records which encoder made each side (``meta/text_encoder``,
``meta/image_encoder``) so a run trained on it knows how to embed a new query.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stitch.data.dataset import DataError
from stitch.io.atomic import atomic_write, atomic_write_text, ensure_writable

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class CaptionTable:
    texts: list[str]
    images: list[str] | None  # the image file each caption describes (None: queries only)


def read_captions(path: str | Path) -> CaptionTable:
    """The Kaggle ``image,caption`` CSV (header required), or plain text with one caption per line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    with path.open(newline="", encoding="utf-8") as handle:
        first = handle.readline()
        handle.seek(0)
        header = [h.strip().lower() for h in next(csv.reader([first]), [])]
        if header[:2] == ["image", "caption"]:
            rows = list(csv.DictReader(handle, skipinitialspace=True))
            rows = [{k.strip().lower(): v for k, v in r.items()} for r in rows]
            bad = [i + 2 for i, r in enumerate(rows) if not r.get("image") or not (r.get("caption") or "").strip()]
            if bad:
                raise DataError(f"{path}: rows without image or caption at lines {bad[:8]}")
            return CaptionTable([r["caption"].strip() for r in rows], [r["image"].strip() for r in rows])
        texts = [line.strip() for line in handle if line.strip()]
    if not texts:
        raise DataError(f"{path}: no captions found")
    return CaptionTable(texts, None)


def list_images(folder: str | Path) -> list[str]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of images")
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _chunks(n: int, size: int):
    for index, start in enumerate(range(0, n, size)):
        yield index, start, min(n, start + size)


def _encode_in_parts(name: str, items: list, encode, parts: Path, chunk: int, desc: str) -> np.ndarray:
    """Encode ``items`` chunk by chunk into ``parts/name-XXXXX.npy``, skipping finished chunks."""
    from tqdm.auto import tqdm

    outputs = []
    bar = tqdm(total=len(items), desc=desc, unit="item")
    for index, start, stop in _chunks(len(items), chunk):
        path = parts / f"{name}-{index:05d}.npy"
        if path.exists():
            block = np.load(path, allow_pickle=False)
        else:
            block = encode(items[start:stop])
            atomic_write(path, lambda tmp, b=block: _save_npy(tmp, b))
        outputs.append(block)
        bar.update(stop - start)
    bar.close()
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as handle:
        np.save(handle, array)


def _load_images(folder: Path, names: list[str]) -> tuple[list, list[str]]:
    from PIL import Image, UnidentifiedImageError

    images, broken = [], []
    for name in names:
        try:
            with Image.open(folder / name) as im:
                im.load()
                images.append(im.convert("RGB"))
        except (OSError, UnidentifiedImageError, ValueError):
            broken.append(name)
    return images, broken


def encode_dataset(
    out: str | Path,
    captions: str | Path | None = None,
    images: str | Path | None = None,
    text_spec: str = "minilm",
    image_spec: str | None = None,
    chunk: int = 256,
    force: bool = False,
    device: str = "cpu",
) -> Path:
    """Encode captions and/or an image folder into ``out`` (npz); resumable through ``out.parts``."""
    out = Path(out)
    if captions is None and images is None:
        raise DataError("give captions, images, or both")
    if images is not None and image_spec is None:
        raise DataError("encoding images needs an image encoder (--image-encoder)")
    ensure_writable(out, force)
    parts = _parts_folder(
        out, {"captions": str(captions), "images": str(images), "text": text_spec, "image": image_spec, "chunk": chunk}
    )
    arrays: dict[str, np.ndarray] = {}
    table = read_captions(captions) if captions is not None else None
    skipped: list[str] = []
    if images is not None:
        skipped = _encode_images(arrays, Path(images), table, image_spec, device, parts, chunk)
    if table is not None:
        _encode_captions(arrays, table, images is not None, text_spec, device, parts, chunk)
    atomic_write(out, lambda tmp: _savez(tmp, arrays))
    if skipped:
        atomic_write_text(out.with_name(out.name + ".skipped.txt"), "\n".join(skipped) + "\n")
        print(f"skipped {len(skipped)} image(s) (missing or unreadable), listed in {out.name}.skipped.txt")
    shutil.rmtree(parts)
    return out


def _parts_folder(out: Path, manifest: dict) -> Path:
    """``OUT.parts``: finished chunks of an interrupted run with the same settings, or a new folder."""
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    manifest_path = parts / "manifest.json"
    if manifest_path.exists() and json.loads(manifest_path.read_text()) != manifest:
        raise DataError(f"{parts} holds an interrupted run with other settings; remove it or use the same ones")
    atomic_write_text(manifest_path, json.dumps(manifest))
    return parts


def _encode_images(arrays: dict, folder: Path, table, image_spec: str, device: str, parts: Path, chunk: int) -> list:
    """Image embeddings into ``arrays``; returns the names skipped (missing or unreadable)."""
    from stitch.encoders.image import image_encoder

    present = set(list_images(folder))
    wanted = list(dict.fromkeys(table.images)) if table and table.images else sorted(present)
    missing = [n for n in wanted if n not in present]
    names = [n for n in wanted if n in present]
    encoder = image_encoder(image_spec, device)
    broken_path = parts / "broken.json"
    broken_all: list[str] = json.loads(broken_path.read_text()) if broken_path.exists() else []

    def encode_images(batch: list[str]) -> np.ndarray:
        loaded, broken = _load_images(folder, batch)
        broken_all.extend(broken)
        atomic_write_text(broken_path, json.dumps(broken_all))
        keep = np.array([n not in broken for n in batch])
        emb = np.full((len(batch), encoder.dim), np.nan, dtype=np.float32)
        if loaded:
            emb[keep] = encoder.encode(loaded)
        return emb

    image_emb = _encode_in_parts("images", names, encode_images, parts, chunk, "images")
    ok = np.isfinite(image_emb).all(axis=1)
    arrays["images/names"] = np.array([n for n, good in zip(names, ok) if good])
    arrays["images/embeddings"] = image_emb[ok]
    arrays["meta/image_encoder"] = np.array(encoder.spec)
    return missing + [n for n, good in zip(names, ok) if not good]


def _encode_captions(arrays: dict, table, with_images: bool, text_spec: str, device: str, parts: Path, chunk: int):
    """Caption embeddings, texts, ids (``<image stem>#<n>``) and image rows into ``arrays``."""
    from stitch.encoders.text import text_encoder

    texts, owners = table.texts, table.images
    if with_images and owners is not None:
        row_of = {n: i for i, n in enumerate(arrays["images/names"])}
        keep = [i for i, owner in enumerate(owners) if owner in row_of]
        texts, owners = [texts[i] for i in keep], [owners[i] for i in keep]
        arrays["captions/image_index"] = np.array([row_of[o] for o in owners], dtype=np.int64)
    encoder = text_encoder(text_spec, device)
    arrays["captions/embeddings"] = _encode_in_parts("captions", texts, encoder.encode, parts, chunk, "captions")
    arrays["captions/text"] = np.array(texts)
    if owners is not None:
        counter: dict[str, int] = {}
        ids = []
        for owner in owners:
            ids.append(f"{Path(owner).stem}#{counter.get(owner, 0)}")
            counter[owner] = counter.get(owner, 0) + 1
        arrays["captions/ids"] = np.array(ids)
    else:
        arrays["captions/ids"] = np.arange(len(texts)).astype(str)
    arrays["meta/text_encoder"] = np.array(encoder.spec)


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An npz holds texts as fixed-width numpy strings; variable-width ones would be pickled, which no
    reader that refuses pickles (stitch's included) can open."""
    plain = {k: np.array(v.tolist(), dtype=str) if v.dtype.kind in "OT" else v for k, v in arrays.items()}
    with path.open("wb") as handle:
        np.savez(handle, **plain, allow_pickle=False)


def reencode_captions(
    data_path: str | Path,
    out: str | Path,
    text_spec: str,
    chunk: int = 1024,
    force: bool = False,
    device: str = "cpu",
) -> Path:
    """The dataset of ``data_path`` (npz) with its caption texts embedded again by ``text_spec``: same
    images, split, ids and texts, so a run trained on it is comparable to one trained on the original.
    Used to train a translator from a cheaper query encoder's space (``static:PATH``)."""
    from stitch.encoders.text import text_encoder

    out = Path(out)
    ensure_writable(out, force)
    with np.load(data_path, allow_pickle=False) as npz:
        if "captions/text" not in npz.files:
            raise DataError(f"{data_path} has no captions/text to embed again; keys: {sorted(npz.files)}")
        arrays = {k: npz[k] for k in npz.files if k not in ("captions/embeddings", "meta/text_encoder")}
    encoder = text_encoder(text_spec, device)
    parts = _parts_folder(out, {"from": str(data_path), "text": text_spec, "chunk": chunk})
    texts = [str(t) for t in arrays["captions/text"]]
    arrays["captions/embeddings"] = _encode_in_parts("captions", texts, encoder.encode, parts, chunk, "captions")
    arrays["meta/text_encoder"] = np.array(encoder.spec)
    atomic_write(out, lambda tmp: _savez(tmp, arrays))
    shutil.rmtree(parts)
    return out
