"""Issue 14's ablation: each training ingredient added alone to the default recipe, several seeds, on the
Flickr8k dev split (1,000 images, 5,000 captions; the file's split column).

Rows go to a CSV as they finish (a re-run skips finished ones), then a table of mean ± spread (half the
max - min over seeds) for the run's own scoring (inverted softmax) and plain cosine, with training time.
Dev is for choosing: these figures choose; they are not a final test score.

    python benchmarks/ablation.py --seeds 0 1 2 [--only grouped mixup] [--csv benchmarks/results_ablation.csv]
        [--runs bench/runs/ablation]
    python benchmarks/ablation.py --table    # the README table from the CSV, nothing trained
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import numpy as np

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k" / "flickr8k.npz"
INGREDIENTS = {
    "default": [],
    "grouped batches": ["optim.sampler=grouped"],
    "hard-image batches": ["optim.sampler=hard"],
    "mixup 0.6": ["optim.mixup_alpha=0.6"],
    "filter 10%": ["filter_fraction=0.1"],
    "MSE weight 1": ["loss.mse_weight=1.0"],
    "temperature 0.1->0.04": [
        "loss.learnable_temperature=false",
        "loss.temperature=0.1",
        "loss.final_temperature=0.04",
    ],
    "3-fold ensemble": ["ensemble.folds=3"],
    "fused with reverse (0.2)": ["ensemble.partner=reverse", "ensemble.partner_weight=0.2"],
    "fused: + reverse + shared heads (0.15 each)": [
        "ensemble.partner=reverse,shared-heads",
        "ensemble.partner_weight=0.15",
    ],
}
FIELDS = ["ingredient", "seed", "recall@1", "mrr", "plain_recall@1", "plain_mrr", "best_epoch", "train_s", "load"]


def finished(path: Path) -> set[tuple[str, int]]:
    if not path.exists():
        return set()
    return {(r["ingredient"], int(r["seed"])) for r in csv.DictReader(path.open())}


def run_one(data, name: str, seed: int, runs: Path | None) -> dict:
    from stitch import api

    started = time.perf_counter()
    slug = "".join(c if c.isalnum() or c in ".-" else "_" for c in name)
    out = None if runs is None else runs / f"{slug}-s{seed}"
    result = api.train(data, None, out=out, overrides=[*INGREDIENTS[name], f"seed={seed}"], progress=False)
    own, plain = result.dev_reports[0].metrics, result.dev_metrics
    return {
        "ingredient": name,
        "seed": seed,
        "recall@1": f"{own['recall@1']:.4f}",
        "mrr": f"{own['mrr']:.4f}",
        "plain_recall@1": f"{plain['recall@1']:.4f}",
        "plain_mrr": f"{plain['mrr']:.4f}",
        "best_epoch": result.best_epoch,
        "train_s": f"{time.perf_counter() - started:.0f}",
        "load": f"{os.getloadavg()[0]:.1f}",
    }


def table(path: Path) -> str:
    rows = list(csv.DictReader(path.open()))
    lines = [
        "| ingredient | seeds | R@1 (IS) | MRR (IS) | R@1 (cosine) | MRR (cosine) | train s (load) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in INGREDIENTS:
        mine = [r for r in rows if r["ingredient"] == name]
        if not mine:
            continue

        def cell(key: str, mine: list[dict] = mine) -> str:
            values = np.array([float(r[key]) for r in mine])
            if len(values) == 1:
                return f"{values[0]:.4f}"
            return f"{values.mean():.4f} ± {(values.max() - values.min()) / 2:.4f}"

        seconds = np.mean([float(r["train_s"]) for r in mine])
        load = np.mean([float(r["load"]) for r in mine])  # 1-minute load average at the end: > 1.5 means shared cores
        keys = ("recall@1", "mrr", "plain_recall@1", "plain_mrr")
        cells = " | ".join(cell(k) for k in keys)
        lines.append(f"| {name} | {len(mine)} | {cells} | {seconds:.0f} ({load:.1f}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=list(INGREDIENTS))
    parser.add_argument("--csv", type=Path, default=Path(__file__).with_name("results_ablation.csv"))
    parser.add_argument("--runs", type=Path, help="keep each run's folder here (e.g. for ensembles of them)")
    parser.add_argument("--table", action="store_true", help="print the table of the rows in --csv; train nothing")
    args = parser.parse_args()
    if args.table:
        print(table(args.csv))
        return
    if not FLICKR.exists():
        raise SystemExit(f"{FLICKR} is absent: the shared data folder must sit beside the repo as ../shared")
    from stitch import api

    data = api.load(FLICKR)
    done = finished(args.csv)
    for seed in args.seeds:
        for name in args.only or list(INGREDIENTS):
            if (name, seed) in done:
                continue
            row = run_one(data, name, seed, args.runs)
            print(row, flush=True)
            new = not args.csv.exists()
            with args.csv.open("a", newline="") as handle:
                writer = csv.DictWriter(handle, FIELDS)
                if new:
                    writer.writeheader()
                writer.writerow(row)
    print(table(args.csv))


if __name__ == "__main__":
    main()
