"""Few pairs with unpaired pools, measured through the product: ``stitch curve --unpaired`` on Flickr8k.

For each seed (the nested image subsets' seed) and each pool variant (``same``: the rest of the training
images, captions and images of the same pictures, links dropped; ``disjoint``: captions of one half of the
rest, images of the other), one ``stitch curve`` trains ridge (pairs only), the ``self-learning`` recipe
and the ``zero-pair`` recipe at 250 and 1,000 training captions and scores them on the 1,000 dev images
(5,000 captions): own scoring and as submitted (a grader's cosine with the raw image). Then the mean and
half range over seeds.

    .venv/bin/python benchmarks/curve_unpaired.py [--data PATH] [--seeds 0 1 2] [--out /tmp/curves]

Curves already in ``--out`` are read, not re-run.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k" / "flickr8k.npz"
RESULTS = Path(__file__).with_name("results_curve_unpaired.txt")
METHODS = ("ridge", "self-learning", "zero-pair")


def curve(data: Path, out: Path, seed: int, variant: str) -> list[dict]:
    folder = out / f"{variant}{seed}"
    if not (folder / "curve.csv").exists():
        command = [sys.executable, "-m", "stitch", "curve", "--data", str(data), "--methods", *METHODS,
                   "--sizes", "250", "1000", "--unpaired", variant, "--seed", str(seed), "--out", str(folder),
                   "--quiet"]  # fmt: skip
        subprocess.run(command, check=True)
    lines = (folder / "curve.csv").read_text().splitlines()
    return list(csv.DictReader(line for line in lines if not line.startswith("#")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("/tmp/curves"))
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} is absent: this benchmark needs Flickr8k (../shared)")
    table: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for variant in ("same", "disjoint"):
        for seed in args.seeds:
            for row in curve(args.data, args.out, seed, variant):
                size = 250 if int(row["pairs"]) < 600 else 1000
                method = row["method"].split(" (")[0]
                label = variant if "pools" in row["method"] else "-"
                if label == "-" and variant == "disjoint":
                    continue  # ridge uses no pools: the same run again
                table[(size, method, label)].append((float(row["mrr"]), float(row["submitted_mrr"])))
    lines = [
        "stitch curve --unpaired on Flickr8k: dev text->image, full gallery of 1000 images, 5000 captions",
        f"seeds {args.seeds}; mean (± half range) of MRR, own scoring and as submitted",
        "size  method         pools      own MRR          submitted MRR",
    ]
    for (size, method, label), values in sorted(table.items(), key=lambda kv: (kv[0][0], METHODS.index(kv[0][1]))):
        own, graded = np.array(values).T
        lines.append(
            f"{size:>5} {method:<14} {label:<9} {own.mean():.4f} ± {np.ptp(own) / 2:.4f}  "
            f"{graded.mean():.4f} ± {np.ptp(graded) / 2:.4f}  (n={len(values)})"
        )
    text = "\n".join(lines)
    print(text)
    RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    main()
