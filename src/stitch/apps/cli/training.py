"""Commands that make runs: train, convert, bench, curve, tune, ensemble, metric, demo, recipes.

Each is one call into :mod:`stitch.api` or an application, and prints what it made. Heavy imports happen
inside the functions, so building the parser imports no torch.
"""

from __future__ import annotations

import os
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from stitch import registries
from stitch.apps.cli.declare import Opt, command, option
from stitch.apps.cli.sources import IMAGE_KEY_HELP, DataSource
from stitch.apps.study_options import StudyOptions
from stitch.errors import UsageError


@dataclass(frozen=True)
class TrainSettings:
    """What a run trains: a config file or a named recipe, the unpaired pools, and overrides on top."""

    config: str | None = field(
        default=None, metadata=option("YAML config: a path, or a shipped config's name (stitch recipes lists them)")
    )
    recipe: str | None = field(
        default=None, metadata=option("a named recipe (stitch recipes lists them); overrides come after it")
    )
    unpaired_captions: str | None = field(
        default=None,
        metadata=option(
            "caption embeddings with no image (.npy, a query file or a paired file's captions): self-learning and "
            "zero-pair need them; learnt recipes (the default) add pseudo-pairs drawn from them to their batches; "
            "a row equal to a dev row is refused, one equal to a training pair's caption is dropped"
        ),
    )
    unpaired_images: str | None = field(
        default=None, metadata=option("image embeddings with no caption (.npy or a paired file's images)")
    )
    print_config: bool = field(default=False, metadata=option("print the resolved config as YAML and exit"))
    overrides: tuple[str, ...] = field(
        default=(),
        metadata=option("config overrides, e.g. optim.lr=1e-3 model.name=mlp", positional=True, metavar="overrides"),
    )

    def resolved(self) -> tuple[str | None, list[str]]:
        """The config file (a shipped name resolved to its path) and every override, the recipe's first."""
        from stitch.packaged import resolve
        from stitch.recipes import recipe_overrides

        config = None if self.config is None else str(resolve(self.config, "config"))
        given = {"captions": self.unpaired_captions, "images": self.unpaired_images}
        pools = [f"semi.unpaired_{side}={path}" for side, path in given.items() if path]
        return config, [*(recipe_overrides(self.recipe) if self.recipe else []), *pools, *self.overrides]


@dataclass(frozen=True)
class RunFolder:
    """Where a run is written, and what may happen to a run already there."""

    out: str | None = field(default=None, metadata=option("run folder (default runs/<time>)"))
    resume: bool = field(default=False, metadata=option("continue the run in --out from its last epoch"))
    force: bool = field(default=False, metadata=option("replace an existing run in --out"))
    force_config: bool = field(
        default=False, metadata=option("with --resume: continue with a config that differs from the run's")
    )


@command("train")
def train(
    source: DataSource,
    settings: TrainSettings,
    folder: RunFolder,
    nproc: Annotated[
        int, Opt("data-parallel processes on this machine: relaunches this command under torchrun (needs --out)")
    ] = 0,
    quiet: bool = False,
) -> int:
    """train a translator (default recipe unless --config)"""
    if nproc:
        return _relaunch_under_torchrun(nproc)
    from stitch import api
    from stitch.retrieval.evaluate import format_reports

    config, overrides = settings.resolved()
    if settings.print_config:
        from stitch.training import load_config

        print(load_config(config, overrides).to_yaml(), end="")
        return 0
    data = source.load()
    out = folder.out or _default_run_dir()
    result = api.train(
        data, config, out=out, overrides=overrides, resume=folder.resume, force=folder.force,
        force_config=folder.force_config, progress=not quiet, data_source=source.name,
    )  # fmt: skip
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one rank reports
        print(f"run: {out}")
        if result.members:
            best = ", ".join(str(m.best_epoch) for m in result.members)
            print(f"split: {result.split}; {len(result.members)} members averaged (best epochs {best})")
        else:
            print(f"split: {result.split}; best epoch {result.best_epoch}")
        print(format_reports(result.dev_reports))
    return 0


def _default_run_dir() -> str:
    import time

    return str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))


def _relaunch_under_torchrun(nproc: int) -> int:
    """``stitch train --nproc N ...``: the same command under torchrun (PyTorch's launcher, which watches the
    workers and stops the job when one dies), N processes on this machine. Every rank needs the same
    run folder, so ``--out`` is required."""
    import subprocess

    argv = sys.argv[1:]
    if "--out" not in argv and not any(a.startswith("--out=") for a in argv):
        raise UsageError("--nproc needs --out: every process must write to (rank 0) and read the same run folder")
    kept = _without_option(argv, "--nproc")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.call([*launcher, "-m", "stitch", *kept])


def _without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            kept.append(arg)
    return kept


@command("convert")
def convert(
    source: Annotated[
        str, Opt("a paired file or folder (npz, .pt, clip-retrieval, Parquet/Arrow, HF datasets)", positional=True)
    ],
    out: Annotated[str, Opt("output folder (refused if it exists, unless --force)", positional=True)],
    shard_rows: Annotated[int, Opt("captions per shard, at most (whole images)")] = 262_144,
    dtype: Annotated[str, Opt("embedding precision on disk", choices=("float16", "float32"))] = "float16",
    image_key: Annotated[str | None, Opt(IMAGE_KEY_HELP)] = None,
    force: Annotated[bool, Opt("replace an existing output folder")] = False,
) -> int:
    """write any supported data layout as stitch's sharded layout (memory-mapped, read on demand)"""
    from stitch import api

    written = api.convert(source, out, shard_rows=shard_rows, dtype=dtype, image_key=image_key, force=force)
    opened = api.load(written)
    print(
        f"wrote {opened.n_captions} captions of {opened.n_images} images in {len(opened.shards)} shard(s) "
        f"({dtype}) to {written}"
    )
    return 0


@command("bench")
def bench(
    source: DataSource,
    methods: Annotated[list[str] | None, Opt("recipe names (default: all; see stitch recipes)")] = None,
    out: Annotated[str, Opt("folder for runs/, leaderboard.md/.csv/.png")] = "bench",
    retrain: Annotated[bool, Opt("retrain methods that already have a finished run")] = False,
    overrides: Annotated[
        list[str], Opt("overrides applied to every method (e.g. optim.epochs=2)", positional=True)
    ] = (),  # type: ignore[assignment]
    quiet: bool = False,
) -> int:
    """train named recipes on one split and write a leaderboard"""
    from stitch.apps.bench import run_bench

    run_bench(
        source.load(), out, methods=methods, extra_overrides=list(overrides), reuse=not retrain, progress=not quiet
    )
    return 0


@dataclass(frozen=True)
class CurveOptions:
    """The curve's points: training sizes, the subsets' seed and the pools of the methods that use them."""

    sizes: tuple[int, ...] | None = field(
        default=None,
        metadata=option(
            "training captions per point (whole images); 0 = all (default: 250 1000 4000 16000 0)", nargs="+"
        ),
    )
    seed: int = field(default=0, metadata=option("seed of the nested image subsets"))
    unpaired: str = field(
        default="same",
        metadata=option(
            "pools for the methods that use them (self-learning, zero-pair): the rest of the training images, "
            "captions and images of the same pictures (same) or captions and images of different halves (disjoint)",
            nargs="?",
            const="same",
            metavar="same|disjoint",
        ),
    )


@command("curve")
def curve(
    source: DataSource,
    methods: Annotated[list[str], Opt("recipe names (stitch recipes lists them)", nargs="+")],
    out: Annotated[str, Opt("folder for curve.csv and curve.png")],
    points: CurveOptions,
    force: Annotated[bool, Opt("replace an existing curve in --out")] = False,
    overrides: Annotated[list[str], Opt("config overrides applied to every method", positional=True)] = (),  # type: ignore[assignment]
    quiet: bool = False,
) -> int:
    """quality against the number of training pairs, one line per recipe"""
    from stitch.apps.curve import DEFAULT_SIZES, CurveSettings, learning_curve

    data = source.load().select(None)
    settings = CurveSettings(tuple(points.sizes or DEFAULT_SIZES), points.seed, tuple(overrides), points.unpaired)
    learning_curve(data, methods, out, settings, not quiet, force)
    print(f"wrote {Path(out) / 'curve.csv'} and {Path(out) / 'curve.png'}")
    return 0


@command("tune")
def tune(
    source: DataSource,
    space: Annotated[str, Opt("search space: a shipped name (default, heads) or a YAML path")],
    study: StudyOptions,
    out: Annotated[str, Opt("folder for best.yaml, trials.csv and the default SQLite study")] = "tune",
    print_space: Annotated[bool, Opt("print the resolved search space and exit")] = False,
    confirm_seeds: Annotated[
        int,
        Opt("after the study, retrain the default and the best trial with N new seeds each (confirm.csv)", metavar="N"),
    ] = 0,
) -> int:
    """Optuna search over a recipe space on the dev split"""
    from stitch.apps import tuning
    from stitch.packaged import resolve

    searched = tuning.load_space(resolve(space, "space"))
    if print_space:
        print(tuning.space_yaml(searched), end="")
        return 0
    data = source.load()
    finished = tuning.tune(data, searched, out, study)
    print("\n".join(tuning.study_lines(finished, study.study_name, out)))
    if confirm_seeds and tuning.completed(finished):
        print(f"retraining the default and the best trial with {confirm_seeds} new seeds each ...")
        result = tuning.confirm(data, searched, finished, out, confirm_seeds)
        print("\n".join(tuning.confirm_lines(result, searched, out)))
    return 0


@command("ensemble")
def ensemble(
    runs: Annotated[
        list[str], Opt("run folders (average: scoring in one space, e.g. the same data split)", positional=True)
    ],
    out: Annotated[str, Opt("ensemble folder (usable as --run anywhere)")],
    weights: Annotated[list[float] | None, Opt("one weight per run (default equal)")] = None,
    combine: Annotated[
        str,
        Opt(
            "average: mean unit translation (one space; submittable); score: weighted mean of the runs' cosine "
            "scores (any recipes or spaces, e.g. dual heads with a translator; search and evaluate only)",
            choices=("average", "score"),
        ),
    ] = "average",
    force: bool = False,
) -> int:
    """combine several runs (seeds, folds or recipes) into one predictor folder"""
    from stitch.training.ensemble import write_ensemble

    written = write_ensemble(out, runs, weights, force, combine)
    print(f"wrote ensemble of {len(runs)} runs ({combine}) to {written}")
    return 0


@command("metric")
def metric(
    data: Annotated[str, Opt("'digits' (scikit-learn's bundled set) or an npz with x, labels")] = "digits",
    loss: Annotated[str, Opt(choices=("triplet", "contrastive"))] = "triplet",
    miner: Annotated[str, Opt(choices=registries.MINERS.names)] = "semihard",
    margin: float = 0.2,
    epochs: int = 150,
    seed: int = 0,
    evaluation: MetricEvaluation | None = None,
    out: Annotated[str | None, Opt("folder for the weights, metrics.json and the t-SNE plot")] = None,
) -> int:
    """classic metric learning on labelled vectors (siamese / triplet)"""
    from stitch.apps.metric_learning.run import run_metric_learning
    from stitch.apps.metric_learning.train import EmbeddingConfig

    e = evaluation or MetricEvaluation()
    config = EmbeddingConfig(loss=loss, miner=miner, margin=margin, epochs=epochs, seed=seed)
    run_metric_learning(
        data, config, out=out, k=e.k, test_fraction=e.test_fraction, projection=e.projection, force=e.force
    )
    return 0


def _projections() -> list[str]:
    return [*registries.PROJECTIONS.names(), "none"]


@dataclass(frozen=True)
class MetricEvaluation:
    """How a metric-learning run is judged and drawn, and whether it may replace an earlier one."""

    k: int = field(default=5, metadata=option("neighbours for kNN classification / regression"))
    test_fraction: float = field(default=0.5, metadata=option("share of the vectors held out for testing"))
    projection: str = field(default="tsne", metadata=option("2-D map of the test embeddings", choices=_projections))
    force: bool = field(default=False, metadata=option("replace an earlier metric-learning folder in --out"))


@command("demo")
def demo(
    out: Annotated[str | None, Opt("keep the demo run in this folder (default: runs/demo)")] = None,
    quick: Annotated[bool, Opt("a smaller dataset, seconds instead of minutes")] = False,
) -> int:
    """train and evaluate the default recipe on built-in synthetic data"""
    from stitch.apps.demo import run_demo

    run_demo(out=out, quick=quick)
    return 0


@command("recipes")
def recipes() -> int:
    """list the named recipes, shipped configs and tuning spaces"""
    from stitch.packaged import packaged_names
    from stitch.recipes import RECIPES

    print("recipes (stitch train --recipe NAME, stitch bench --methods NAME ...):")
    for recipe in RECIPES.values():
        first = f"  {recipe.name:<14} "
        print("\n".join(textwrap.wrap(recipe.notes, width=100, initial_indent=first, subsequent_indent=" " * 17)))
    print(f"shipped configs (--config NAME): {', '.join(packaged_names('config'))}")
    print(f"tuning spaces (stitch tune --space NAME): {', '.join(packaged_names('space'))}")
    return 0
