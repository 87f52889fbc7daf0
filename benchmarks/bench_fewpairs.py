"""Few pairs, many loose embeddings: supervised closed forms vs self-learning on Flickr8k.

Pairs: nested by-image subsets of the train images (a seeded permutation; the first images holding 250
and 1000 captions, all their captions). Pools: the other train captions and images with their links
dropped — variant A: captions and images of the same remaining images; variant B (disjoint): the
remaining images split in halves, images from one half, captions from the other (truth all -1). Dev
(1000 images, 5000 captions) is never in a pool.

Scores on dev, text -> image over the full dev gallery: MRR and R@1 by cosine in the z-scored space
(stitch's own scoring) and as graded: the direction ``unit(z) / std`` by cosine against raw unit images.

    .venv/bin/python benchmarks/bench_fewpairs.py [--data PATH] [--seeds 0 1 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from stitch.semi.self_learning import SelfLearning, SelfLearningResult, self_learn, zscore_stats
from stitch.translators.moments import PairMoments

DATA = Path("/work/shared/data/flickr8k/flickr8k.npz")
OUT = Path(__file__).with_name("results_fewpairs.txt")


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in ("captions/embeddings", "captions/image_index", "images/embeddings", "images/split")}


def ranks(queries: np.ndarray, gallery: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """1-based rank of each query's true gallery row by cosine (ties counted against)."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    g = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    sims = q @ g.T
    right = sims[np.arange(len(q)), truth]
    return 1 + (sims > right[:, None]).sum(1)


def figures(result: SelfLearningResult, dev_x: np.ndarray, dev_y: np.ndarray, dev_truth: np.ndarray) -> dict:
    own = ranks(result.translate(dev_x), (dev_y - result.mean) / result.std, dev_truth)
    graded = ranks(result.direction(dev_x), dev_y, dev_truth)
    return {"mrr": float(np.mean(1 / own)), "r1": float(np.mean(own == 1)),
            "g_mrr": float(np.mean(1 / graded)), "g_r1": float(np.mean(graded == 1))}


def supervised(x: np.ndarray, y: np.ndarray, method: str, alpha: float) -> SelfLearningResult:
    """Closed form on the pairs alone, z-scored with the pairs' images (as stitch does today)."""
    mean, std = zscore_stats([y])
    moments = PairMoments.of(x, (y - mean) / std)
    weight, bias = moments.ridge(alpha) if method == "ridge" else moments.procrustes()
    return SelfLearningResult(weight, bias, mean, std, [])


def splits(data: dict, size: int, seed: int, variant: str):
    """Seed pairs, pools and the pools' truth for one (size, seed, variant)."""
    cap_img = data["captions/image_index"]
    train_imgs = np.flatnonzero(data["images/split"] == "train")
    order = np.random.default_rng(seed).permutation(train_imgs)
    counts = np.bincount(cap_img, minlength=len(data["images/split"]))[order]
    take = int(np.searchsorted(np.cumsum(counts), size)) + 1
    paired, rest = order[:take], order[take:]
    if variant == "A":
        pool_imgs, pool_cap_imgs = rest, rest
    else:
        half = len(rest) // 2
        pool_imgs, pool_cap_imgs = rest[:half], rest[half:]
    seed_caps = np.flatnonzero(np.isin(cap_img, paired))
    pool_caps = np.flatnonzero(np.isin(cap_img, pool_cap_imgs))
    row_of = np.full(len(data["images/split"]), -1)
    row_of[pool_imgs] = np.arange(len(pool_imgs))
    return seed_caps, pool_caps, pool_imgs, row_of[cap_img[pool_caps]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000])
    parser.add_argument("--variants", nargs="+", default=["A", "B"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--pseudo-weight", type=float, default=1.0)
    parser.add_argument("--max-pairs", type=int, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    data = load(args.data)
    caps, imgs, cap_img = data["captions/embeddings"], data["images/embeddings"], data["captions/image_index"]
    dev_imgs = np.flatnonzero(data["images/split"] == "dev")
    dev_caps = np.flatnonzero(np.isin(cap_img, dev_imgs))
    dev_row = np.full(len(imgs), -1)
    dev_row[dev_imgs] = np.arange(len(dev_imgs))
    dev_x, dev_y, dev_truth = caps[dev_caps], imgs[dev_imgs].astype(np.float64), dev_row[cap_img[dev_caps]]
    rows, lines = [], []
    for size in args.sizes:
        for seed in args.seeds:
            for variant in args.variants:
                seed_caps, pool_caps, pool_imgs, truth = splits(data, size, seed, variant)
                assert not np.isin(pool_imgs, dev_imgs).any() and not np.isin(cap_img[pool_caps], dev_imgs).any()
                x, y = caps[seed_caps], imgs[cap_img[seed_caps]]
                runs = {}
                if variant == args.variants[0]:  # the supervised fits do not see the pools
                    runs["ridge"] = supervised(x, y, "ridge", args.alpha)
                    runs["procrustes"] = supervised(x, y, "procrustes", args.alpha)
                started = time.perf_counter()
                runs["self-learn"] = self_learn(
                    x, y, caps[pool_caps], imgs[pool_imgs],
                    SelfLearning(rounds=args.rounds, alpha=args.alpha, pseudo_weight=args.pseudo_weight,
                                 max_pairs=args.max_pairs, seed=seed), truth)
                seconds = time.perf_counter() - started
                for name, result in runs.items():
                    fig = figures(result, dev_x, dev_y, dev_truth)
                    log = result.log
                    trace = " ".join(f"{e['pseudo_pairs']}@{e['precision']:.2f}" for e in log[1:]) or "-"
                    rows.append({"size": size, "seed": seed, "variant": variant if log else "-", "method": name,
                                 "pairs": len(seed_caps), **fig, "trace": trace})
                    line = (f"{size:>5} {len(seed_caps):>5} {seed:>4} {rows[-1]['variant']:>3} {name:<11} "
                            f"{fig['mrr']:.4f} {fig['r1']:.4f} {fig['g_mrr']:.4f} {fig['g_r1']:.4f}  {trace}")
                    print(line + (f"  ({seconds:.0f}s)" if log else ""), flush=True)
                    lines.append(line)
    summary = ["", "mean over seeds (size, variant, method): own MRR, own R@1, graded MRR, graded R@1"]
    keys = sorted({(r["size"], r["variant"], r["method"]) for r in rows})
    for size, variant, method in keys:
        sel = [r for r in rows if (r["size"], r["variant"], r["method"]) == (size, variant, method)]
        means = [np.mean([r[k] for r in sel]) for k in ("mrr", "r1", "g_mrr", "g_r1")]
        summary.append(f"{size:>5} {variant:>3} {method:<11} " + " ".join(f"{m:.4f}" for m in means)
                       + f"  (n={len(sel)})")
    print("\n".join(summary))
    header = [
        "bench_fewpairs: Flickr8k dev text->image (1000 images, 5000 captions), full gallery",
        f"command: .venv/bin/python benchmarks/bench_fewpairs.py --seeds {' '.join(map(str, args.seeds))} "
        f"--rounds {args.rounds} --alpha {args.alpha} --pseudo-weight {args.pseudo_weight}"
        f" --max-pairs {args.max_pairs}",
        "columns: size pairs seed variant method "
        "own_MRR own_R@1 graded_MRR graded_R@1  pseudo-pairs@precision per round",
        "variant A: pools from the same remaining train images; B: disjoint halves (precision is 0 by construction)",
    ]
    args.out.write_text("\n".join(header + lines + summary) + "\n")


if __name__ == "__main__":
    main()
