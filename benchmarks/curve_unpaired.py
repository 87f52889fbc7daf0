"""Few pairs with unpaired pools, measured through the product on Flickr8k, in three parts.

``--part closed-form``: for each seed (the nested image subsets' seed) and each pool variant (``same``: the
rest of the training images, captions and images of the same pictures, links dropped; ``disjoint``:
captions of one half of the rest, images of the other), one ``stitch curve`` trains ridge (pairs only), the
``self-learning`` recipe and the ``zero-pair`` recipe at 250 and 1,000 training captions and scores them on
the 1,000 dev images (5,000 captions): own scoring and as submitted (a grader's cosine with the raw image).
Then the mean and half range over seeds.

``--part learnt``: the default recipe (a residual MLP trained by gradient) at 1,000 training captions (or
``--sizes``), on
the pairs only and with the rest of the training images as ``same`` pools (``default+pools``: pseudo-pairs
in its batches and in its closed-form start), and the latter again with each ``--set`` override (the
neighbourhood regulariser, another pseudo-pair weight). ``--unpaired disjoint`` gives ``default+pools`` the
``disjoint`` pools instead (captions of one half of the rest, images of the other), so that any gain is not
pool matching.

``--part checks``: every training pair, without pools and with the training set's own captions and images
as pools (links dropped), for ridge against the ``self-learning`` recipe and, with ``--learnt``, the default
recipe against itself with pools: with nothing left to learn from, the pools should not cost dev MRR.

    .venv/bin/python benchmarks/curve_unpaired.py --part closed-form [--seeds 0 1 2] [--out /tmp/curves]
    .venv/bin/python benchmarks/curve_unpaired.py --part learnt --seeds 0 [--sizes 1000] [--unpaired disjoint]
        [--set semi.neighbour_weight=1]
    .venv/bin/python benchmarks/curve_unpaired.py --part checks [--learnt]

Curves already in ``--out`` are read, not re-run, so seeds can be added one command at a time; each part
rewrites its own block of ``results_curve_unpaired.txt`` and keeps the others (a learnt part at other sizes
or with disjoint pools is a block of its own, e.g. ``## learnt (250 pairs, disjoint pools)``).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k" / "flickr8k.npz"
RESULTS = Path(__file__).with_name("results_curve_unpaired.txt")
METHODS = ("ridge", "self-learning", "zero-pair")
LEARNT = ("default", "default+pools")
PARTS = ("closed-form", "learnt", "checks")


def _rows(folder: Path) -> list[dict]:
    lines = (folder / "curve.csv").read_text().splitlines()
    return list(csv.DictReader(line for line in lines if not line.startswith("#")))


def curve(data: Path, out: Path, seed: int, variant: str) -> list[dict]:
    folder = out / f"{variant}{seed}"
    if not (folder / "curve.csv").exists():
        command = [sys.executable, "-m", "stitch", "curve", "--data", str(data), "--methods", *METHODS,
                   "--sizes", "250", "1000", "--unpaired", variant, "--seed", str(seed), "--out", str(folder),
                   "--quiet"]  # fmt: skip
        subprocess.run(command, check=True)
    return _rows(folder)


def learnt_curve(
    data: Path,
    folder: Path,
    settings_of: tuple[int, int],
    methods: tuple[str, ...],
    overrides=(),
    unpaired: str = "same",
):
    """One in-process curve of learnt methods at ``(seed, size)`` with ``unpaired`` pools (read back when
    present)."""
    if not (folder / "curve.csv").exists():
        from stitch import api
        from stitch.apps.curve import CurveSettings, learning_curve

        seed, size = settings_of
        settings = CurveSettings(sizes=(size,), seed=seed, overrides=tuple(overrides), unpaired=unpaired)
        learning_curve(api.load(data), list(methods), folder, settings)
    return _rows(folder)


def _summary(values: list[tuple[float, float]]) -> str:
    own, graded = np.array(values).T
    spread = f"{own.mean():.4f} ± {np.ptp(own) / 2:.4f}  {graded.mean():.4f} ± {np.ptp(graded) / 2:.4f}"
    return f"{spread}  (n={len(values)})"


def closed_form(args) -> list[str]:
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
        lines.append(f"{size:>5} {method:<14} {label:<9} {_summary(values)}")
    return lines


def learnt(args) -> list[str]:
    table: dict[tuple[int, str], list[tuple[float, float]]] = defaultdict(list)
    for size in args.sizes:
        for seed in args.seeds:
            where = f"learnt{seed}" if size == 1000 else f"learnt{seed}-{size}"
            where += "" if args.unpaired == "same" else f"-{args.unpaired}"
            for row in learnt_curve(args.data, args.out / where, (seed, size), LEARNT, (), args.unpaired):
                table[(size, row["method"])].append((float(row["mrr"]), float(row["submitted_mrr"])))
            for override in args.set:
                folder = args.out / f"{where}-{override.replace('=', '-')}"
                for row in learnt_curve(args.data, folder, (seed, size), LEARNT[1:], [override], args.unpaired):
                    label = f"{row['method']}, {override}"
                    table[(size, label)].append((float(row["mrr"]), float(row["submitted_mrr"])))
    same = ["the rest of train as same pools (links dropped; dev never in a pool); dev text->image, full gallery of"]
    disjoint = ["the rest of train as disjoint pools (captions of one half of its images, images of the other half,",
                "so the pools do not correspond; dev never in a pool); dev text->image, full gallery of"]  # fmt: skip
    pools = same if args.unpaired == "same" else disjoint
    lines = [
        "Learnt recipe with unpaired pools on Flickr8k: training captions from nested by-image subsets of train,",
        *pools,
        "1000 images, 5000 captions; mean (± half range) over the seeds of each row, own scoring and as submitted",
        " size  method                                               own MRR          submitted MRR",
    ]
    lines += [f"{size:>5}  {method:<52} {_summary(values)}" for (size, method), values in table.items()]
    return lines


def checks(args) -> list[str]:
    """Every training pair, with and without the training set's own captions and images as pools."""
    from stitch import api
    from stitch.recipes import recipe_overrides

    data = api.load(args.data)
    train = data.split("train")
    pool = args.out / "own-pool.npz"
    if not pool.exists():
        args.out.mkdir(parents=True, exist_ok=True)
        np.savez(pool, **{"captions/embeddings": train.captions, "captions/image_index": train.caption_image,
                          "images/embeddings": train.images})  # fmt: skip
    pooled = [f"semi.unpaired_captions={pool}", f"semi.unpaired_images={pool}"]
    runs = [("ridge", []), ("self-learning", pooled)]
    if args.learnt:
        runs += [("default", []), ("default", pooled)]
    lines = [
        "All training pairs (Flickr8k train split), without pools and with the training set's own captions and",
        "images as pools (links dropped; 47 captions equal to dev captions left out); dev text->image, full",
        "gallery of 1000 images, 5000 captions, own scoring; seed 0",
        "recipe          pools       own MRR  submitted MRR  seconds",
    ]
    for name, pools in runs:
        started = time.perf_counter()
        result = api.train(data, None, overrides=[*recipe_overrides(name), *pools], progress=False)
        graded = api.evaluate(result, data.split("dev"), as_submitted=True)[0].metrics["mrr"]
        own, seconds = result.dev_reports[0].metrics["mrr"], time.perf_counter() - started
        label = "own train" if pools else "none"
        lines.append(f"{name:<15} {label:<10} {own:.4f}   {graded:.4f}         {seconds:.0f}")
        print(lines[-1], flush=True)
    return lines


def write_block(name: str, lines: list[str]) -> None:
    """Replace the block ``## name`` of the results file (to the next ``## `` header), keeping the others in their
    order; a new block goes last, and one blank line parts each block from the next."""
    blocks: dict[str, list[str]] = {}
    old = RESULTS.read_text().splitlines() if RESULTS.exists() else []
    current = None if any(line.startswith("## ") for line in old) else "closed-form"  # a file of one block
    if current is not None:
        blocks[current] = []
    for line in old:
        if line.startswith("## "):
            current = line[3:]
            blocks[current] = []
        elif current is not None:
            blocks[current].append(line)
    blocks[name] = list(lines)
    text = "\n\n".join("\n".join([f"## {block}", *body]).rstrip("\n") for block, body in blocks.items())
    RESULTS.write_text(text.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=PARTS, default="closed-form")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("/tmp/curves"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000], help="learnt: training captions")
    parser.add_argument("--unpaired", choices=("same", "disjoint"), default="same", help="learnt: the pools")
    parser.add_argument("--set", nargs="*", default=[], help="learnt: overrides, each one more default+pools row")
    parser.add_argument("--learnt", action="store_true", help="checks: the default recipe too (slow)")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} is absent: this benchmark needs Flickr8k (../shared)")
    lines = {"closed-form": closed_form, "learnt": learnt, "checks": checks}[args.part](args)
    lines.insert(0, "$ .venv/bin/python benchmarks/curve_unpaired.py " + " ".join(sys.argv[1:]))
    print("\n".join(lines))
    write_block(args.part + _qualifier(args), lines)


def _qualifier(args) -> str:
    """A learnt block's qualifier: its sizes unless 1000 and its pools unless ``same`` (`` (250 pairs, disjoint
    pools)``); none for the default learnt block or another part."""
    if args.part != "learnt":
        return ""
    words = [] if args.sizes == [1000] else [f"{' '.join(map(str, args.sizes))} pairs"]
    words += [] if args.unpaired == "same" else [f"{args.unpaired} pools"]
    return f" ({', '.join(words)})" if words else ""


if __name__ == "__main__":
    main()
