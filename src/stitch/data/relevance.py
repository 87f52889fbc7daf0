"""Which gallery items are relevant to each query: a sparse relation, optionally graded.

One caption describing one image is the common case (``Relevance.from_owner``); real data is often
many-to-many (a product query with several matching items, a caption text attached to several
pictures, a label-matrix row with two ones). The relation is stored as CSR — ``indptr`` over queries,
``items`` per link, optional positive ``grades`` — so memory is O(links), and the item -> query direction
is its transpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stitch.data.errors import DataError, describe_rows


@dataclass(frozen=True)
class Relevance:
    """Relevant items of each query (rows sorted by item, no duplicates, none empty)."""

    indptr: np.ndarray
    items: np.ndarray
    n_items: int
    grades: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("indptr", "items"):
            value = np.asarray(getattr(self, name))
            if value.ndim != 1 or (value.size and value.dtype.kind not in "iu"):
                raise DataError(f"relevance {name} must be a 1-D integer array, got {value.dtype} {value.shape}")
        indptr = np.asarray(self.indptr, dtype=np.int64)
        items = np.asarray(self.items, dtype=np.int64)
        if indptr.ndim != 1 or len(indptr) < 1 or indptr[0] != 0 or indptr[-1] != len(items):
            raise DataError(f"relevance offsets must run from 0 to the {len(items)} links, got {indptr[:3]}...")
        counts = np.diff(indptr)
        if (counts < 0).any():
            raise DataError("relevance offsets must not decrease")
        if (counts == 0).any():
            raise DataError(f"queries with no relevant item: {describe_rows(np.where(counts == 0)[0])}")
        if len(items) and (items.min() < 0 or items.max() >= self.n_items):
            bad = np.where((items < 0) | (items >= self.n_items))[0]
            raise DataError(f"relevant item out of range [0, {self.n_items}) in links {describe_rows(bad)}")
        query = np.repeat(np.arange(len(counts)), counts)
        order = np.lexsort((items, query))
        items = items[order]
        repeated = (np.diff(items) == 0) & (np.diff(query) == 0)
        if repeated.any():
            raise DataError(f"queries list an item twice: {describe_rows(np.unique(query[1:][repeated]))}")
        grades = None if self.grades is None else np.asarray(self.grades, dtype=np.float64)
        if grades is not None:
            if grades.shape != (len(items),) or not np.isfinite(grades).all() or (grades <= 0).any():
                raise DataError("relevance grades must be one finite positive number per link")
            grades = grades[order]
        object.__setattr__(self, "indptr", indptr)
        object.__setattr__(self, "items", items)
        object.__setattr__(self, "n_items", int(self.n_items))
        object.__setattr__(self, "grades", grades)

    @classmethod
    def from_counts(
        cls, counts: np.ndarray, items: np.ndarray, n_items: int, grades: np.ndarray | None = None
    ) -> Relevance:
        """From the number of relevant items of each query and the items (and grades) query after query."""
        return cls(np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]), items, n_items, grades)

    @classmethod
    def from_owner(cls, owner: np.ndarray, n_items: int) -> Relevance:
        """One relevant item per query: the one-caption-one-image case."""
        owner = np.asarray(owner, dtype=np.int64)
        return cls(np.arange(len(owner) + 1), owner, n_items)

    @classmethod
    def from_lists(
        cls, lists: Sequence[Sequence[int]], n_items: int, grades: Sequence[Sequence[float]] | None = None
    ) -> Relevance:
        """From a list of item-row lists per query (and matching grade lists)."""
        counts = np.array([len(row) for row in lists], dtype=np.int64)
        items = [np.asarray(row, dtype=np.int64) for row in lists]
        flat = None if grades is None else np.concatenate([np.asarray(g, dtype=np.float64) for g in grades])
        return cls.from_counts(counts, np.concatenate(items) if items else np.zeros(0, np.int64), n_items, flat)

    @classmethod
    def from_dense(cls, matrix: np.ndarray) -> Relevance:
        """From a queries x items matrix: non-zero entries are relevant, values other than 1 are grades."""
        matrix = np.asarray(matrix)
        rows, cols = np.nonzero(matrix)
        values = matrix[rows, cols].astype(np.float64)
        graded = not np.all(values == 1)
        counts = np.bincount(rows, minlength=matrix.shape[0])
        return cls.from_counts(counts, cols, matrix.shape[1], values if graded else None)

    @property
    def n_queries(self) -> int:
        return len(self.indptr) - 1

    @property
    def counts(self) -> np.ndarray:
        """Relevant items per query."""
        return np.diff(self.indptr)

    @property
    def link_queries(self) -> np.ndarray:
        """The query of every link (aligned with ``items``)."""
        return np.repeat(np.arange(self.n_queries), self.counts)

    @property
    def places(self) -> np.ndarray:
        """The 0-based place of every link within its query's row."""
        return np.arange(len(self.items)) - self.indptr[self.link_queries]

    @property
    def first_items(self) -> np.ndarray:
        """Each query's first (lowest-numbered) relevant item: its own item when one is to be named."""
        return self.items[self.indptr[:-1]]

    @property
    def is_single(self) -> bool:
        """Every query has exactly one relevant item and no grades: the fast special case."""
        return self.grades is None and len(self.items) == self.n_queries

    def mean_of_items(self, rows: np.ndarray) -> np.ndarray:
        """Per query, the mean of its relevant items' ``rows``. A least-squares fit to these means is the fit
        to every query-item link weighted 1/(items of the query): the squared error to each link differs
        from the error to the mean by a constant, so a query with many items does not dominate."""
        picked = np.asarray(rows, dtype=np.float64)[self.items]
        return (np.add.reduceat(picked, self.indptr[:-1], axis=0) / self.counts[:, None]).astype(np.float32)

    def padded(self) -> np.ndarray:
        """Relevant items as a queries x (most items of a query) matrix, padded with -1 (the label rows of
        training batches)."""
        out = np.full((self.n_queries, int(self.counts.max(initial=1))), -1, dtype=np.int64)
        out[self.link_queries, self.places] = self.items
        return out

    def row(self, query: int) -> np.ndarray:
        return self.items[self.indptr[query] : self.indptr[query + 1]]

    def transpose(self) -> Relevance:
        """Item -> query relevance (items without any query are an error: they have nothing to retrieve)."""
        order = np.lexsort((self.link_queries, self.items))
        counts = np.bincount(self.items, minlength=self.n_items)
        grades = None if self.grades is None else self.grades[order]
        return Relevance.from_counts(counts, self.link_queries[order], self.n_queries, grades)

    def subset(self, query_rows: np.ndarray, item_rows: np.ndarray) -> Relevance:
        """The relation between these queries and items, renumbered; every kept query must keep an item."""
        remap = np.full(self.n_items, -1, dtype=np.int64)
        remap[np.asarray(item_rows, dtype=np.int64)] = np.arange(len(item_rows))
        queries = np.asarray(query_rows, dtype=np.int64)
        counts = self.counts[queries]
        starts = np.repeat(self.indptr[queries], counts)
        links = starts + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)  # rows' links
        items = remap[self.items[links]]
        kept = items >= 0
        kept_counts = np.bincount(np.repeat(np.arange(len(queries)), counts)[kept], minlength=len(queries))
        grades = None if self.grades is None else self.grades[links][kept]
        return Relevance.from_counts(kept_counts, items[kept], len(item_rows), grades)

    def components(self) -> tuple[np.ndarray, np.ndarray]:
        """Connected components of the query-item graph: a label per query and per item.

        Splitting by component keeps every query with all its items and every item with all its queries,
        so nothing straddles train and dev. Labels are the smallest node number of each component."""
        n_q = self.n_queries
        labels = np.arange(n_q + self.n_items)
        a, b = self.link_queries, n_q + self.items
        while True:
            low = np.minimum(labels[a], labels[b])
            before = labels.copy()
            np.minimum.at(labels, a, low)
            np.minimum.at(labels, b, low)
            labels = labels[labels]  # pointer jumping: follow labels to their own labels
            if np.array_equal(labels, before):
                return labels[:n_q], labels[n_q:]
