"""``stitch curve``: retrieval quality against the number of training pairs, one line per recipe.

A user with 500 pairs and one with 500,000 need different recipes (closed-form maps are expected to win
small, learnt ones large); the curve measures it on their data. Every point trains on a seeded subset of
the training images (by image, so no image is split), growing in nested steps — the 1k-pair subset holds
the 250-pair one — and is scored on the same dev images, under the run's own scoring and plain cosine.
Writes ``curve.csv`` and ``curve.png`` after every point, so a long curve's partial results survive.

A method is a recipe name; ``RECIPE+pools`` trains a recipe that does not need unpaired pools with them
anyway (a learnt recipe then adds pseudo-pairs to its batches), beside the same recipe without.
"""

from __future__ import annotations

import csv
import io
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from stitch import api
from stitch.data import DataError, PairedEmbeddings, train_dev_split
from stitch.io.atomic import atomic_write, atomic_write_text, ensure_writable
from stitch.recipes import recipe_overrides, uses_pools

DEFAULT_SIZES = (250, 1000, 4000, 16000, 0)  # training captions; 0 = all of them
WITH_POOLS = "+pools"  # a method's suffix: the recipe trained with the unpaired pools


def recipe_of(method: str) -> str:
    """The recipe a curve method trains (``default+pools`` trains ``default``)."""
    return method.removesuffix(WITH_POOLS)


def takes_pools(method: str) -> bool:
    """Whether a curve method trains with the unpaired pools: its recipe needs them, or it asks for them."""
    return method.endswith(WITH_POOLS) or uses_pools(recipe_of(method))


@dataclass(frozen=True)
class CurvePoint:
    method: str
    pairs: int  # training captions used
    images: int
    recall_at_1: float  # the run's own scoring
    mrr: float
    plain_recall_at_1: float  # plain cosine in the run's space
    plain_mrr: float
    seconds: float
    submitted_recall_at_1: float | None = None  # what a grader gives the run's predict vectors (None: cannot submit)
    submitted_mrr: float | None = None


def nested_image_subsets(data: PairedEmbeddings, sizes: list[int], seed: int = 0) -> list[np.ndarray]:
    """Image rows of ``data`` holding at least ``size`` captions each (0: every image), nested: one seeded
    order of the images, each subset a prefix of it."""
    order = np.random.default_rng(seed).permutation(data.n_images)
    captions_so_far = np.cumsum(np.bincount(data.caption_image, minlength=data.n_images)[order])
    subsets = []
    for size in sizes:
        if size > captions_so_far[-1]:
            raise DataError(f"{size} training pairs asked for, but the training images hold {captions_so_far[-1]}")
        take = data.n_images if size == 0 else int(np.searchsorted(captions_so_far, size)) + 1
        subsets.append(np.sort(order[:take]))
    return subsets


def _with_split(train: PairedEmbeddings, dev: PairedEmbeddings) -> PairedEmbeddings:
    """Train and dev images in one dataset whose split column says which is which."""
    offset = train.n_images
    return PairedEmbeddings(
        captions=np.concatenate([train.captions, dev.captions]),
        images=np.concatenate([train.images, dev.images]),
        caption_image=np.concatenate([train.caption_image, dev.caption_image + offset]),
        image_split=np.array(["train"] * train.n_images + ["dev"] * dev.n_images),
        encoders=dict(train.encoders),
    )


@dataclass(frozen=True)
class CurveSettings:
    """What a curve varies and holds fixed: the training sizes (captions; 0 = all), the subsets' seed, the
    overrides every method gets, and the unpaired pools of the methods that use them: ``same`` (the rest of
    the training images, captions and images, links dropped) or ``disjoint`` (captions of one half of the
    rest, images of the other: real pools do not correspond, so a gain there is not pool matching)."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    seed: int = 0
    overrides: tuple[str, ...] = ()
    unpaired: str = "same"

    def __post_init__(self) -> None:
        if self.unpaired not in UNPAIRED:
            raise DataError(f"unpaired pools must be one of {UNPAIRED}, got {self.unpaired!r}")


UNPAIRED = ("same", "disjoint")


def learning_curve(
    data: PairedEmbeddings,
    methods: list[str],
    out_dir: str | Path,
    settings: CurveSettings | None = None,
    progress: bool = False,
    force: bool = False,
) -> list[CurvePoint]:
    """Train every method on nested subsets of the training images and score each on the dev images; the
    methods that use unpaired pools get the rest of the training images as pools (see :class:`CurveSettings`)."""
    settings = settings or CurveSettings()
    for name in methods:
        recipe_overrides(recipe_of(name))  # unknown names fail before any training
    ensure_writable(Path(out_dir) / "curve.csv", force)  # before hours of training, not after
    data = replace(data, relevance=None) if data.relevance is not None else data
    train, dev, how = train_dev_split(data)
    subsets = nested_image_subsets(train, list(settings.sizes), settings.seed)
    out_dir = Path(out_dir)
    points: list[CurvePoint] = []
    protocol = f"dev: {how}, gallery of {dev.n_images} images, {dev.n_captions} queries"
    with tempfile.TemporaryDirectory(prefix="stitch-curve-pools-") as pool_dir:
        for images in subsets:
            subset = _with_split(train.subset_images(images), dev)
            pooled = any(takes_pools(name) for name in methods)
            pools = _pools(train, images, settings, Path(pool_dir) / str(len(images))) if pooled else []
            for name in methods:
                point = _method_point(name, subset, dev, settings, pools, progress)
                if point is not None:
                    points.append(point)
                    write_curve(points, out_dir, protocol)
    return points


def _method_point(name: str, subset, dev, settings: CurveSettings, pools: list[str], progress: bool):
    """One method's point on one subset; a method that uses pools gets them (and says which in its label),
    or is skipped when no training image is left to pool."""
    recipe = recipe_overrides(recipe_of(name), settings.overrides)  # shared settings where the kind has them
    if not takes_pools(name):
        return _point(name, subset, dev, recipe, progress)
    if not pools:
        print(f"[curve] {name} on {subset.n_captions - dev.n_captions} pairs: skipped, no image left for pools")
        return None
    point = _point(name, subset, dev, [*recipe, *pools], progress)
    return replace(point, method=f"{name} ({settings.unpaired} pools)")


def _pools(train: PairedEmbeddings, images: np.ndarray, settings: CurveSettings, folder: Path) -> list[str]:
    """``semi.unpaired_*`` overrides naming pool files of the training images outside ``images`` (written
    into ``folder``); none when no image is left."""
    rest = np.setdiff1d(np.arange(train.n_images), images)
    if len(rest) < 2:
        return []
    folder.mkdir(parents=True)
    if settings.unpaired == "same":  # one paired file: the links let the run measure pseudo-pair precision
        pool = train.subset_images(rest)
        path = folder / "pool.npz"
        arrays = {"captions/embeddings": pool.captions, "captions/image_index": pool.caption_image}
        np.savez(path, **arrays, **{"images/embeddings": pool.images})
        return [f"semi.unpaired_captions={path}", f"semi.unpaired_images={path}"]
    halves = np.array_split(np.random.default_rng(settings.seed + 1).permutation(rest), 2)
    captions = train.subset_images(np.sort(halves[0])).captions
    np.save(folder / "captions.npy", captions)
    np.save(folder / "images.npy", train.images[np.sort(halves[1])])
    return [f"semi.unpaired_captions={folder / 'captions.npy'}", f"semi.unpaired_images={folder / 'images.npy'}"]


def _point(name: str, subset: PairedEmbeddings, dev: PairedEmbeddings, overrides: list[str], progress: bool):
    """One method trained on one subset: its own, plain and graded figures, and the time it took."""
    started = time.perf_counter()
    result = api.train(subset, None, overrides=overrides, progress=progress)
    own, plain = result.dev_reports[0].metrics, result.dev_metrics
    seconds = time.perf_counter() - started
    graded = api.evaluate(result, dev, as_submitted=True)[0].metrics if result.run.model.has_image_space else {}
    point = CurvePoint(
        name,
        subset.n_captions - dev.n_captions,
        subset.n_images - dev.n_images,
        own["recall@1"],
        own["mrr"],
        plain["recall@1"],
        plain["mrr"],
        seconds,
        graded.get("recall@1"),
        graded.get("mrr"),
    )  # fmt: skip
    submitted = f", as submitted {graded['mrr']:.4f}" if graded else ""
    print(f"[curve] {name} on {point.pairs} pairs: MRR {own['mrr']:.4f} (plain {plain['mrr']:.4f}{submitted})")
    return point


def write_curve(points: list[CurvePoint], out_dir: Path, protocol: str) -> dict[str, Path]:
    """``curve.csv`` (one row per point, with the protocol) and ``curve.png`` (MRR against pairs, log scale)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["method", "pairs", "images", "recall@1", "mrr", "plain_recall@1", "plain_mrr", "seconds",
                     "submitted_recall@1", "submitted_mrr"])  # fmt: skip
    for p in points:
        graded = [_figure(p.submitted_recall_at_1), _figure(p.submitted_mrr)]
        writer.writerow([p.method, p.pairs, p.images, f"{p.recall_at_1:.4f}", f"{p.mrr:.4f}",
                         f"{p.plain_recall_at_1:.4f}", f"{p.plain_mrr:.4f}", f"{p.seconds:.1f}", *graded])  # fmt: skip
    buffer.write(f"# {protocol}\n")
    paths = {"csv": out_dir / "curve.csv", "plot": out_dir / "curve.png"}
    atomic_write_text(paths["csv"], buffer.getvalue())
    atomic_write(paths["plot"], lambda tmp: _plot(points, tmp, protocol))
    return paths


def _figure(value: float | None) -> str:
    """A metric cell; empty for a method that cannot be submitted."""
    return "" if value is None else f"{value:.4f}"


def _plot(points: list[CurvePoint], path: Path, protocol: str) -> None:
    from stitch.outputs.plots import new_figure

    fig = new_figure(figsize=(15, 4.2))
    axes = fig.subplots(1, 3, sharey=True)
    panels = ((axes[0], "mrr", "the run's own scoring"), (axes[1], "plain_mrr", "plain cosine"))
    for ax, field, title in (*panels, (axes[2], "submitted_mrr", "as submitted (graded)")):
        for method in dict.fromkeys(p.method for p in points):
            mine = sorted(
                (p for p in points if p.method == method and getattr(p, field) is not None), key=lambda p: p.pairs
            )
            ax.plot([p.pairs for p in mine], [getattr(p, field) for p in mine], marker="o", label=method)
        ax.set_xscale("log")
        ax.set_xlabel("training pairs (captions)")
        ax.set_title(f"dev MRR, {title}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("MRR")
    axes[2].legend(fontsize=8)
    fig.suptitle(protocol, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
