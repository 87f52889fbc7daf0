"""``stitch bench``: train named recipes on one split and rank them honestly in one leaderboard."""

from __future__ import annotations

import json
import time
from pathlib import Path

from stitch import api
from stitch.data import PairedEmbeddings, train_dev_split
from stitch.outputs.leaderboard import write_leaderboard
from stitch.recipes import RECIPES, recipe_overrides, uses_pools

DEFAULT_METHODS = tuple(name for name in RECIPES if not uses_pools(name))  # no pools in a bench


def _train_once(name: str, run_dir: Path, data, extra_overrides, reuse: bool, progress: bool) -> float:
    """Train ``name`` into ``run_dir`` unless a finished run is there to reuse; its training seconds."""
    timing = run_dir / "bench_time.json"
    if not (reuse and (run_dir / "summary.json").exists() and timing.exists()):
        print(f"[bench] training {name} -> {run_dir}", flush=True)
        start = time.perf_counter()
        overrides = recipe_overrides(name, extra_overrides or [])
        api.train(data, None, out=run_dir, overrides=overrides, force=True, progress=progress)
        timing.write_text(json.dumps({"train_s": time.perf_counter() - start}))
    return json.loads(timing.read_text())["train_s"]


def _bench_row(name: str, run_dir: Path, data, dev, seconds: float) -> dict:
    """One leaderboard row: plain cosine, inverted softmax, the run's own scoring on dev, and what a grader
    gives its submission (empty for runs that cannot be submitted)."""
    plain = _dev_report(run_dir, data, dev, "none")
    rescored = _dev_report(run_dir, data, dev, "is")
    default = _dev_report(run_dir, data, dev, None)
    submittable = api.open(run_dir).model.has_image_space
    graded = _dev_report(run_dir, data, dev, None, as_submitted=True) if submittable else None
    m, r = plain.metrics, rescored.metrics
    g = graded.metrics if graded is not None else {}
    as_submitted = f"MRR {g['mrr']:.4f}" if graded is not None else "cannot be submitted"
    print(
        f"[bench] {name}: R@1 {m['recall@1']:.4f} MRR {m['mrr']:.4f} | +IS R@1 {r['recall@1']:.4f} "
        f"MRR {r['mrr']:.4f} | as submitted {as_submitted} ({seconds:.0f} s)",
        flush=True,
    )
    return {
        "method": name,
        "reference": RECIPES[name].reference,
        "R@1": m["recall@1"],
        "R@5": m["recall@5"],
        "R@10": m["recall@10"],
        "MRR": m["mrr"],
        "R@1 +IS": r["recall@1"],
        "MRR +IS": r["mrr"],
        "R@1 submitted": g.get("recall@1", ""),
        "MRR submitted": g.get("mrr", ""),
        "train_s": round(seconds),
        "gallery": plain.gallery,
        "queries": plain.queries,
        "own_mrr": default.metrics["mrr"],
    }


def run_bench(
    data: PairedEmbeddings,
    out_dir: str | Path,
    methods: list[str] | None = None,
    extra_overrides: list[str] | None = None,
    reuse: bool = True,
    progress: bool = True,
) -> list[dict]:
    """Train each method (reusing finished runs in ``out_dir/runs`` when ``reuse``), evaluate on dev."""
    out_dir = Path(out_dir)
    methods = list(methods or DEFAULT_METHODS)
    for name in methods:
        recipe_overrides(name)  # fail early on unknown names
    _, dev, how = train_dev_split(data)
    protocol = f"text->image, dev split ({how}), full gallery of {dev.n_images} images, {dev.n_captions} queries"
    rows = []
    for name in methods:
        run_dir = out_dir / "runs" / name
        seconds = _train_once(name, run_dir, data, extra_overrides, reuse, progress)
        rows.append(_bench_row(name, run_dir, data, dev, seconds))
        rows.sort(key=lambda row: -row["own_mrr"])
        paths = write_leaderboard(rows, out_dir, protocol)  # after every method: partial results survive
    print(f"[bench] leaderboard: {paths['markdown']}, {paths['csv']}, {paths['plot']}")
    return rows


def _dev_report(
    run_dir: Path, data: PairedEmbeddings, dev: PairedEmbeddings, rerank: str | None, as_submitted: bool = False
):
    """Evaluate on the same dev images the run early-stopped on (the file's split or the seeded one)."""
    if "dev" in data.split_names():
        return api.evaluate(run_dir, data, split="dev", rerank=rerank, as_submitted=as_submitted)[0]
    return api.evaluate(run_dir, dev, rerank=rerank, as_submitted=as_submitted)[0]
