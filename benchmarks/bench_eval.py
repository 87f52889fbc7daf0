"""Exact evaluation at competition scale: time and peak memory against baselines measured in the same run.

Default sizes: 125,000 queries x 25,000 gallery items x 1,536 dims (seeded synthetic data).
Each method runs in its own subprocess so that its peak RSS is its own.

- blas:   the bare chunked matmul of the same sizes (every score computed, nothing else): the floor.
- stitch: stitch's exact evaluator (chunked scores + pessimistic ranks + metrics).
- naive:  the seed notebooks' method: the full query x gallery matrix, then a full argsort per row.
          Run at a reduced number of queries and scaled linearly (its full-size matrix alone is
          125k x 25k x 4 B = 12.5 GB, plus an 8-byte argsort of the same shape).

Usage: python benchmarks/bench_eval.py [--queries N --gallery N --dim N --naive-queries N]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def make_data(n_queries: int, n_gallery: int, dim: int, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    gallery = torch.nn.functional.normalize(torch.randn(n_gallery, dim, generator=gen), dim=1)
    positives = torch.randint(0, n_gallery, (n_queries,), generator=gen)
    queries = torch.empty(n_queries, dim)
    for start in range(0, n_queries, 8192):  # built in chunks: no n_queries x dim temporary copies
        rows = positives[start : start + 8192]
        noise = torch.randn(len(rows), dim, generator=gen)
        queries[start : start + 8192] = torch.nn.functional.normalize(gallery[rows] + noise / dim**0.5, dim=1)
    return queries, gallery, positives.numpy()


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def worker(method: str, n_queries: int, n_gallery: int, dim: int, chunk: int) -> dict:
    import torch

    torch.set_num_threads(torch.get_num_threads())
    queries, gallery, positives = make_data(n_queries, n_gallery, dim)
    data_rss = peak_rss_gib()
    start = time.perf_counter()
    if method == "blas":
        checksum = 0.0
        for i in range(0, n_queries, chunk):
            checksum += float((queries[i : i + chunk] @ gallery.T)[0, 0])
        result = {"checksum": checksum}
    elif method == "stitch":
        from stitch.retrieval.metrics import rank_metrics
        from stitch.retrieval.ranks import text_to_image_ranks

        ranks = text_to_image_ranks(queries, gallery, positives, chunk=chunk)
        result = {"recall@1": rank_metrics(ranks)["recall@1"]}
    elif method == "naive":
        scores = queries @ gallery.T
        order = torch.argsort(scores, dim=1, descending=True)
        ranks = (order == torch.as_tensor(positives)[:, None]).nonzero()[:, 1] + 1
        result = {"recall@1": float((ranks == 1).float().mean())}
    else:
        raise ValueError(method)
    seconds = time.perf_counter() - start
    return {"method": method, "seconds": seconds, "peak_rss_gib": peak_rss_gib(), "data_rss_gib": data_rss, **result}


def run(method: str, n_queries: int, n_gallery: int, dim: int, chunk: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        method,
        "--queries",
        str(n_queries),
        "--gallery",
        str(n_gallery),
        "--dim",
        str(dim),
        "--chunk",
        str(chunk),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=125_000)
    parser.add_argument("--gallery", type=int, default=25_000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--naive-queries", type=int, default=12_500, help="queries for the naive run (scaled up)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        n = args.queries
        print(json.dumps(worker(args.worker, n, args.gallery, args.dim, args.chunk)))
        return

    size = f"{args.queries:,} queries x {args.gallery:,} gallery x {args.dim} dims"
    print(f"exact evaluation, {size} (synthetic, seeded), chunk {args.chunk}")
    blas = run("blas", args.queries, args.gallery, args.dim, args.chunk)
    ours = run("stitch", args.queries, args.gallery, args.dim, args.chunk)
    naive = run("naive", args.naive_queries, args.gallery, args.dim, args.chunk)
    scale = args.queries / args.naive_queries
    naive_time = naive["seconds"] * scale
    naive_matrix_gib = args.queries * args.gallery * (4 + 8) / 2**30  # scores + argsort indices
    print(f"{'method':<10} {'seconds':>9} {'peak RSS GiB':>13} {'data GiB':>9}")
    print(f"{'blas':<10} {blas['seconds']:>9.1f} {blas['peak_rss_gib']:>13.2f} {blas['data_rss_gib']:>9.2f}")
    print(f"{'stitch':<10} {ours['seconds']:>9.1f} {ours['peak_rss_gib']:>13.2f} {ours['data_rss_gib']:>9.2f}")
    print(
        f"{'naive*':<10} {naive_time:>9.1f} {naive_matrix_gib:>13.2f} {'':>9}  "
        f"(*measured at {args.naive_queries:,} queries: {naive['seconds']:.1f} s, "
        f"{naive['peak_rss_gib']:.2f} GiB peak; scaled x{scale:g})"
    )
    print(f"stitch / blas time ratio: {ours['seconds'] / blas['seconds']:.2f}  (target <= 1.5)")
    print(f"naive / stitch time ratio: {naive_time / ours['seconds']:.2f}")
    print(
        f"stitch peak RSS: {ours['peak_rss_gib']:.2f} GiB (target < 4 GiB); "
        f"naive would need >= {naive_matrix_gib:.1f} GiB for its matrices alone"
    )
    print(f"stitch recall@1 on this synthetic set: {ours['recall@1']:.4f}")


if __name__ == "__main__":
    main()
