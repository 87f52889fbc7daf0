"""Labelled vectors (x, label, optional continuous targets such as positions) and how to get them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stitch.data.dataset import DataError, check_matrix
from stitch.errors import UsageError


@dataclass(frozen=True)
class LabelledVectors:
    x: np.ndarray
    labels: np.ndarray
    targets: np.ndarray | None = None  # e.g. (n, 2) positions for kNN regression
    image_shape: tuple[int, int] | None = None  # when x are flattened images (enables shift augmentation)

    def __post_init__(self) -> None:
        x = check_matrix("x", self.x)
        labels = np.asarray(self.labels)
        if labels.shape != (len(x),):
            raise DataError(f"labels have shape {labels.shape}, expected ({len(x)},)")
        if self.targets is not None and len(self.targets) != len(x):
            raise DataError(f"{len(self.targets)} targets for {len(x)} rows")
        if self.image_shape is not None and int(np.prod(self.image_shape)) != x.shape[1]:
            raise DataError(f"image_shape {self.image_shape} does not match {x.shape[1]} features")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "labels", labels)

    def subset(self, rows: np.ndarray) -> LabelledVectors:
        targets = None if self.targets is None else self.targets[rows]
        return LabelledVectors(self.x[rows], self.labels[rows], targets, self.image_shape)


def digits() -> LabelledVectors:
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 images, 10 classes), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return LabelledVectors((x / 16.0).astype(np.float32), y.astype(np.int64), image_shape=(8, 8))


def load_labelled(path: str | Path) -> LabelledVectors:
    """An npz with ``x`` (n, d), ``labels`` (n,) and optional ``targets`` (n, t); or the name ``digits``."""
    if str(path) == "digits":
        return digits()
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        npz = np.load(path, allow_pickle=False)
        missing = [k for k in ("x", "labels") if k not in npz.files]
        if missing:
            raise DataError(f"{path}: missing key(s) {missing}; keys found: {sorted(npz.files)}")
        return LabelledVectors(npz["x"], npz["labels"], npz["targets"] if "targets" in npz.files else None)
    except (OSError, ValueError, EOFError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path}: not a readable npz (truncated or corrupt?): {err}") from err


def stratified_split(
    data: LabelledVectors, test_fraction: float = 0.5, seed: int = 0
) -> tuple[LabelledVectors, LabelledVectors]:
    """Seeded split keeping each label's proportion on both sides; every label keeps at least one training
    item, so each held-out item has references of its class."""
    if not 0 < test_fraction < 1:
        raise UsageError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(data.labels):
        rows = rng.permutation(np.flatnonzero(data.labels == label))
        test.extend(rows[: min(int(round(test_fraction * len(rows))), len(rows) - 1)])
    if not test:
        raise DataError(f"a test fraction of {test_fraction} holds out no item: every label has too few rows")
    test = np.sort(np.array(test, dtype=np.int64))
    train = np.setdiff1d(np.arange(len(data.labels)), test)
    return data.subset(train), data.subset(test)
