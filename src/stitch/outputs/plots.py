"""Plots people would rather look at than read (matplotlib, imported lazily).

Figures are made with matplotlib's object API (:func:`new_figure`), never through pyplot's global state:
writing a plot to a file neither switches the backend nor opens a window, so a notebook that used stitch
still shows its own figures inline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stitch.errors import UsageError
from stitch.io.atomic import atomic_write


def new_figure(**kwargs):
    """A matplotlib Figure outside pyplot (``kwargs`` as ``Figure``'s, e.g. ``figsize``)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def colormap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def project_2d(x: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """2-D projection for a scatter plot: t-SNE (scikit-learn), PCA, or UMAP when umap-learn is installed."""
    x = np.asarray(x, dtype=np.float32)
    if method == "pca":
        centred = x - x.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return centred @ vt[:2].T
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30, len(x) - 1)).fit_transform(x)
    if method == "umap":
        import umap  # optional dependency

        return umap.UMAP(random_state=seed).fit_transform(x)
    raise UsageError(f"unknown projection {method!r}; choose tsne, pca or umap")


def scatter_2d(points: np.ndarray, labels: np.ndarray, path: str | Path, title: str) -> Path:
    """One colour per label (legend when there are few labels)."""
    fig = new_figure(figsize=(6.5, 5.5))
    ax = fig.subplots()
    labels = np.asarray(labels)
    values = np.unique(labels)
    cmap = colormap("tab10" if len(values) <= 10 else "tab20")
    for i, value in enumerate(values):
        rows = labels == value
        ax.scatter(points[rows, 0], points[rows, 1], s=8, color=cmap(i % cmap.N), label=str(value), alpha=0.8)
    if len(values) <= 20:
        ax.legend(markerscale=2, fontsize=8, loc="best", frameon=False)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    return Path(path)
