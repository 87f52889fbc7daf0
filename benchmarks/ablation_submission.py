"""What each ingredient of the submission recipe adds, as a grader scores it, over several seeds.

Every figure here is **as submitted**: the run's `stitch predict` vectors ranked by cosine against the raw
Flickr8k dev image embeddings (1,000 images, 5,000 captions; full gallery, and kaggle100), which is what a
competition grader computes. Rows (a re-run skips finished ones, rows go to a CSV as they finish):

- ``default (direction)``: the default recipe, submitting the raw-space direction of its z-scored prediction
  (approximate: the model's own cosine divides by the z-scored image's norm, a grader by the raw one);
- ``graded, no bias``: the submission recipe's model with its folded hubness bias set to zero (same run);
- ``submission``: the submission recipe (graded model + the folded inverted-softmax bias);
- ``submission, text->image loss only``: ``loss.symmetric=false``;
- ``submission + distilled from fused``: ``loss.teacher=FUSED`` (a fused run trained beforehand, ``--teacher``);
- ``seed average`` rows: the members of a row averaged by ``stitch ensemble`` (one vector per caption).

    python benchmarks/ablation_submission.py --seeds 0 1 2 --teacher runs/fused --runs bench/runs/graded
    python benchmarks/ablation_submission.py --table
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import numpy as np

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k" / "flickr8k.npz"
TRAINED = {
    "default (direction)": ["--recipe", "default"],
    "submission": ["--recipe", "submission"],
    "submission, text->image loss only": ["--recipe", "submission", "loss.symmetric=false"],
    "submission + distilled from fused": ["--recipe", "submission", "loss.teacher={teacher}"],
}
FIELDS = ["row", "seed", "recall@1", "mrr", "kaggle100_recall@1", "kaggle100_mrr", "own_mrr", "train_s", "load"]


def finished(path: Path) -> set[tuple[str, str]]:
    if not path.exists():
        return set()
    return {(r["row"], r["seed"]) for r in csv.DictReader(path.open())}


def graded_row(run, data, name: str, seed: str, seconds: float) -> dict:
    from stitch import api

    full = api.evaluate(run, data, split="dev", as_submitted=True)[0].metrics
    kaggle = api.evaluate(run, data, split="dev", protocol="kaggle100", as_submitted=True)[0].metrics
    own = api.evaluate(run, data, split="dev")[0].metrics
    return {
        "row": name,
        "seed": seed,
        "recall@1": f"{full['recall@1']:.4f}",
        "mrr": f"{full['mrr']:.4f}",
        "kaggle100_recall@1": f"{kaggle['recall@1']:.4f}",
        "kaggle100_mrr": f"{kaggle['mrr']:.4f}",
        "own_mrr": f"{own['mrr']:.4f}",
        "train_s": f"{seconds:.0f}",
        "load": f"{os.getloadavg()[0]:.1f}",
    }


def train_one(data, name: str, seed: int, runs: Path, teacher: str) -> tuple[Path, float]:
    from stitch import api
    from stitch.recipes import recipe_overrides

    args = [a.format(teacher=teacher) for a in TRAINED[name]]
    overrides = [*recipe_overrides(args[1]), *args[2:], f"seed={seed}"]
    slug = "".join(c if c.isalnum() or c in ".-" else "_" for c in name)
    out = runs / f"{slug}-s{seed}"
    started = time.perf_counter()
    if not (out / "summary.json").exists():
        api.train(data, None, out=out, overrides=overrides, progress=False, force=True)
    return out, time.perf_counter() - started


def without_bias(run_dir: Path):
    """The same graded run with its folded bias set to zero (the bias's own effect, nothing retrained)."""
    from stitch import api

    run = api.open(run_dir)
    run.model.set_hub_bias(run.model.hub_bias * 0)
    return run


def append(path: Path, row: dict) -> None:
    print(row, flush=True)
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def table(path: Path) -> str:
    rows = list(csv.DictReader(path.open()))
    lines = [
        "| row (as submitted) | seeds | R@1 | MRR | kaggle100 R@1 | kaggle100 MRR | own MRR |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["row"] for r in rows):
        mine = [r for r in rows if r["row"] == name]

        def cell(key: str, mine: list[dict] = mine) -> str:
            values = np.array([float(r[key]) for r in mine])
            if len(values) == 1:
                return f"{values[0]:.4f}"
            return f"{values.mean():.4f} ± {(values.max() - values.min()) / 2:.4f}"

        keys = ("recall@1", "mrr", "kaggle100_recall@1", "kaggle100_mrr", "own_mrr")
        lines.append(f"| {name} | {len(mine)} | " + " | ".join(cell(k) for k in keys) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=list(TRAINED))
    parser.add_argument("--teacher", default="", help="a fused run folder, for the distillation row")
    parser.add_argument("--csv", type=Path, default=Path(__file__).with_name("results_ablation_submission.csv"))
    parser.add_argument("--runs", type=Path, default=Path("bench/runs/graded"), help="where the runs are kept")
    parser.add_argument("--table", action="store_true", help="print the table of the rows in --csv; train nothing")
    args = parser.parse_args()
    if args.table:
        print(table(args.csv))
        return
    if not FLICKR.exists():
        raise SystemExit(f"{FLICKR} is absent: the shared data folder must sit beside the repo as ../shared")
    from stitch import api
    from stitch.training.ensemble import write_ensemble

    data = api.load(FLICKR)
    done = finished(args.csv)
    names = [n for n in (args.only or list(TRAINED)) if args.teacher or "distilled" not in n]
    for name in names:
        members = []
        for seed in args.seeds:
            out, seconds = train_one(data, name, seed, args.runs, args.teacher)
            members.append(out)
            if (name, str(seed)) not in done:
                append(args.csv, graded_row(out, data, name, str(seed), seconds))
            if name == "submission" and ("graded, no bias", str(seed)) not in done:
                append(args.csv, graded_row(without_bias(out), data, "graded, no bias", str(seed), seconds))
        average = f"{name}: average of {len(members)} seeds"
        if len(members) > 1 and (average, "-") not in done:
            folder = args.runs / ("".join(c if c.isalnum() else "_" for c in name) + "-average")
            write_ensemble(folder, [str(m) for m in members], None, True, "average")
            append(args.csv, graded_row(folder, data, average, "-", 0.0))
    print(table(args.csv))


if __name__ == "__main__":
    main()
