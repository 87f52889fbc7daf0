"""Identical rows and texts: exact copies of embedding rows found by digest, and identical caption texts
merged into one query relevant to all their images.

Flickr8k and COCO attach the same text ("a dog runs through the grass") to several pictures; scored
one caption -> one image, each copy has a single right answer and the others count as errors. Merging
copies into one query relevant to every image they describe shows how much that understated a score.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

import numpy as np

from stitch.data.dataset import DataError, PairedEmbeddings
from stitch.data.relevance import Relevance

_FINAL_PUNCTUATION = re.compile(r"[\s.!?,;:]+$")


def normalise_text(text: str) -> str:
    """Case, surrounding spaces, inner runs of spaces and final punctuation do not make a text different."""
    return _FINAL_PUNCTUATION.sub("", " ".join(text.lower().split()))


def row_hashes(rows: np.ndarray) -> np.ndarray:
    """One 16-byte digest per row of float32 values (so float16 and float32 copies of a row agree): exact
    copies of a row between two sets (a query bank and evaluated captions, a pool and a dev split)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    return np.array([hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows], dtype="S16")


@dataclass(frozen=True)
class MergeSummary:
    captions: int
    queries: int
    shared_texts: int  # texts attached to two or more images
    largest: int  # images of the most shared text

    def describe(self) -> str:
        return (
            f"{self.captions} captions -> {self.queries} queries; {self.shared_texts} texts relevant to 2-"
            f"{self.largest} images"
        )


def merge_duplicate_texts(data: PairedEmbeddings) -> tuple[PairedEmbeddings, MergeSummary]:
    """One query per distinct normalised text (its first caption's row), relevant to all images of its copies."""
    if data.caption_texts is None:
        raise DataError("merging duplicate captions needs caption texts; this data has none")
    keys = np.array([normalise_text(t) for t in data.caption_texts])
    _, first, group = np.unique(keys, return_index=True, return_inverse=True)
    order = np.sort(first)  # keep the file's order of first appearances
    renumber = np.empty(len(first), dtype=np.int64)
    renumber[np.argsort(first)] = np.arange(len(first))
    query = renumber[group]
    links = data.relevant
    pairs = np.unique(np.stack([query[links.link_queries], links.items], axis=1), axis=0)  # sorted, no repeats
    relevance = Relevance.from_counts(np.bincount(pairs[:, 0], minlength=len(order)), pairs[:, 1], data.n_images)
    merged = replace(
        data,
        captions=data.captions[order],
        caption_image=data.caption_image[order],
        caption_ids=None if data.caption_ids is None else data.caption_ids[order],
        caption_texts=data.caption_texts[order],
        relevance=relevance,
    )
    counts = relevance.counts
    summary = MergeSummary(len(keys), len(order), int((counts > 1).sum()), int(counts.max()))
    return merged, summary
