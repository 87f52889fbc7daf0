"""Approximate indexes against exact search on a large gallery: recall@10 and queries/s ratios.

Default: 1,000,000 x 256-d gallery (seeded synthetic: a 2,000-centre Gaussian mixture in a 32-d
latent space, linearly embedded in 256-d with small isotropic noise — low intrinsic dimension, as
real embeddings have), 2,000 held-out queries from the same distribution. Exact = stitch's chunked
torch matmul index, measured in the same run; each approximate index reports recall@10 against the
exact top-10 and its speed-up; its params column starts with the FAISS factory string it was built from.

Threads: set OMP_NUM_THREADS (the README figures use 1 thread for exact and approximate alike).

Usage: python benchmarks/bench_ann.py [--n 1000000 --dim 256 --queries 2000 --kinds ivf hnsw ivfpq]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from stitch.retrieval.index import build_index

PARAMS = {
    "flat": {},
    "ivf": {"nlist": 4096, "nprobe": 48},
    "hnsw": {"m": 16, "ef_construction": 80, "ef_search": 96},
    "ivfpq": {"nlist": 1024, "nprobe": 24, "m": 32, "nbits": 8, "refine_factor": 8},
}


def make_gallery(n: int, dim: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    latent = 32
    centres = rng.standard_normal((2000, latent)).astype(np.float32)
    spread = rng.uniform(0.3, 0.9, size=2000).astype(np.float32)
    lift = (rng.standard_normal((latent, dim)) / np.sqrt(latent)).astype(np.float32)

    def draw(m: int) -> np.ndarray:
        c = rng.integers(0, 2000, m)
        z = centres[c] + spread[c, None] * rng.standard_normal((m, latent), dtype=np.float32)
        return z @ lift + 0.05 * rng.standard_normal((m, dim), dtype=np.float32)

    gallery = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        gallery[start : start + min(100_000, n - start)] = draw(min(100_000, n - start))
    return gallery, draw(n_queries)


def timed_search(index, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, float]:
    index.search(queries[:50], k)  # warm-up
    start = time.perf_counter()
    _, ids = index.search(queries, k)
    return ids, len(queries) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--kinds", nargs="*", default=["ivf", "hnsw", "ivfpq"])
    args = parser.parse_args()

    gallery, queries = make_gallery(args.n, args.dim, args.queries)
    print(f"gallery {args.n:,} x {args.dim} (synthetic, clustered, seeded), {args.queries:,} queries, k = 10")
    start = time.perf_counter()
    exact = build_index(gallery, "exact")
    print(f"exact index built in {time.perf_counter() - start:.1f} s")
    truth, exact_qps = timed_search(exact, queries)
    print(f"{'index':<8} {'params':<72} {'build s':>8} {'q/s':>9} {'recall@10':>10} {'speed-up':>9}")
    print(f"{'exact':<8} {'chunked torch matmul':<72} {'-':>8} {exact_qps:>9.0f} {1.0:>10.4f} {1.0:>9.1f}")
    for kind in args.kinds:
        start = time.perf_counter()
        index = build_index(gallery, kind, **PARAMS[kind])
        built = time.perf_counter() - start
        ids, qps = timed_search(index, queries)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)])
        params = " ".join([index.factory or "", *(f"{k}={v}" for k, v in PARAMS[kind].items())])
        print(f"{kind:<8} {params:<72} {built:>8.1f} {qps:>9.0f} {recall:>10.4f} {qps / exact_qps:>9.1f}")
    print("target: recall@10 >= 0.95 at >= 10x the exact queries/s")


if __name__ == "__main__":
    main()
