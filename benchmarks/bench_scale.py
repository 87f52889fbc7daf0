"""Training on pairs that stay on disk: memory and speed against the size of the data.

Writes synthetic float16 pairs (384-d captions -> 1024-d images, one caption per image, a shared 64-d
latent plus noise) in stitch's sharded layout at two sizes, then trains the default recipe for the same
number of drawn pairs on each, every run in a fresh process:

- streamed from disk at the small and the large size: peak anonymous memory (``RssAnon``, sampled every
  20 ms; file-backed mapped pages are reclaimable page cache and are not counted) and samples/s;
- the same small data read into memory first (float32) and trained by the same loop: the in-memory
  baseline of samples/s;
- two data-parallel processes (torchrun, gloo) streaming the small data, on this machine's two cores.

Prints ratios measured in this run. Usage::

    python benchmarks/bench_scale.py                       # 0.5M and 4M pairs, 1M drawn (about 45 min)
    python benchmarks/bench_scale.py --sizes 20000 80000 --drawn 20000 --ddp-drawn 10000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

TEXT_DIM, IMAGE_DIM, LATENT_DIM = 384, 1024, 64
BLOCK = 8192  # rows generated together (one seeded generator per block)


class SyntheticMatrix:
    """Rows of ``z @ mix + noise`` (``side`` 1: captions, 2: images; both share the row's latent ``z``) made
    on demand from per-block seeds, so 4M x 1024 floats never sit in RAM
    (``write_sharded`` reads them chunk by chunk)."""

    def __init__(self, n: int, dim: int, side: int, seed: int = 0) -> None:
        self.shape, self.dtype, self.ndim, self.seed, self.side = (n, dim), np.dtype(np.float32), 2, seed, side
        self.mix = np.random.default_rng([seed, side]).standard_normal((LATENT_DIM, dim)).astype(np.float32) / 8
        self.noise = 2.0 if side == 1 else 1.0  # noisier captions: a task that is not solved at once

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.asarray(rows)
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        for block in np.unique(rows // BLOCK):
            mine = rows // BLOCK == block
            z = np.random.default_rng([self.seed, int(block)]).standard_normal((BLOCK, LATENT_DIM)).astype(np.float32)
            noise = np.random.default_rng([self.seed, int(block), self.side]).standard_normal((BLOCK, self.shape[1]))
            out[mine] = (z @ self.mix + self.noise * noise.astype(np.float32))[rows[mine] % BLOCK]
        return out


def write_data(folder: Path, n: int, shard_rows: int) -> float:
    from stitch.data.sharded import ShardedPairs, write_sharded
    from stitch.data.shards import Shard

    if (folder / "stitch-shards.json").exists():
        return 0.0
    started = time.perf_counter()
    shard = Shard(SyntheticMatrix(n, TEXT_DIM, 1), SyntheticMatrix(n, IMAGE_DIM, 2), np.arange(n), name="synthetic")
    write_sharded(ShardedPairs([shard], source="synthetic"), folder, shard_rows=shard_rows, dtype="float16")
    return time.perf_counter() - started


def peak_rss_anon(stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                peak[0] = max(peak[0], int(line.split()[1]) * 1024)
        stop.wait(0.02)


def child(folder: str, mode: str, drawn: int) -> None:
    """One measured training run (this process's memory only)."""
    import torch

    from stitch import api

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    stop, peak = threading.Event(), [0]
    watcher = threading.Thread(target=peak_rss_anon, args=(stop, peak), daemon=True)
    watcher.start()
    started = time.perf_counter()
    data = api.load(folder)
    if mode == "memory":
        data = data.to_memory()
    loaded = time.perf_counter() - started
    overrides = ["optim.epochs=1", f"optim.samples_per_epoch={drawn}", "max_dev_images=5000"]
    result = api.train(data, None, overrides=overrides, progress=False)
    stop.set()
    watcher.join()
    row = result.history[0]
    batches = drawn // 512
    report = {
        "mode": mode,
        "rank": int(os.environ.get("RANK", "0")),
        "pairs": data.n_captions,
        "drawn": batches * 512,
        "train_seconds": row["seconds"],
        "samples_per_s": batches * 512 / row["seconds"],
        "total_seconds": time.perf_counter() - started,
        "load_seconds": loaded,
        "peak_rss_anon": peak[0],
        "dev_mrr": row["dev_mrr"],
    }
    print("RESULT " + json.dumps(report), flush=True)


def measure(folder: Path, mode: str, drawn: int, nproc: int = 1) -> dict:
    script = [str(Path(__file__).resolve()), "--child", str(folder), mode, str(drawn)]
    env = dict(os.environ)
    if nproc > 1:
        env["BENCH_THREADS"] = str(max(1, (os.cpu_count() or 2) // nproc))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *script]
    else:
        command = [sys.executable, *script]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    rows = [json.loads(line[7:]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not rows:
        raise SystemExit(f"{mode} run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return min(rows, key=lambda r: r["rank"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[500_000, 4_000_000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--drawn", type=int, default=1_000_000, help="pairs drawn by each run (same for all)")
    parser.add_argument("--ddp-drawn", type=int, default=262_144, help="pairs drawn by the two-process run")
    parser.add_argument("--shard-rows", type=int, default=262_144)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/stitch-bench-scale"))
    args = parser.parse_args()
    small, large = (args.folder / f"pairs-{n}" for n in args.sizes)
    for folder, n in ((small, args.sizes[0]), (large, args.sizes[1])):
        print(f"writing {n:,} synthetic float16 pairs to {folder}: {write_data(folder, n, args.shard_rows):.0f} s")
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
    runs = {
        "streamed small": measure(small, "stream", args.drawn),
        "streamed large": measure(large, "stream", args.drawn),
        "in memory small": measure(small, "memory", args.drawn),
        "2-process DDP small": measure(small, "stream", args.ddp_drawn, nproc=2),
    }
    gib = 2**30
    header = f"{'run':22} {'pairs':>10} {'drawn':>10} {'samples/s':>10} {'peak RssAnon':>13} {'setup s':>8}"
    print(f"\n{header} {'dev MRR':>8}")
    for name, r in runs.items():
        setup = r["total_seconds"] - r["train_seconds"]
        print(
            f"{name:22} {r['pairs']:>10,} {r['drawn']:>10,} {r['samples_per_s']:>10.0f} "
            f"{r['peak_rss_anon'] / gib:>10.2f} GiB {setup:>8.0f} {r['dev_mrr']:>8.4f}"
        )
    ratio_rss = runs["streamed large"]["peak_rss_anon"] / runs["streamed small"]["peak_rss_anon"]
    speed = runs["streamed small"]["samples_per_s"] / runs["in memory small"]["samples_per_s"]
    ddp = runs["2-process DDP small"]["samples_per_s"] / runs["streamed small"]["samples_per_s"]
    print(f"\npeak RssAnon large / small: {ratio_rss:.3f} (target <= 1.2)")
    large_gib = runs["streamed large"]["peak_rss_anon"] / gib
    print(f"peak RssAnon at {args.sizes[1]:,} pairs: {large_gib:.2f} GiB (target < 3)")
    print(f"streamed / in-memory samples/s: {speed:.3f} (target >= 0.8)")
    print(f"2-process DDP / 1-process samples/s on {os.cpu_count()} cores: {ddp:.3f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
