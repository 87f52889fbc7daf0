"""Search-service latency under a bounded load on loopback, text encoding included.

Starts ``stitch serve`` in its own process (a ridge run on Flickr8k, dev gallery of 1,000 images, the
real MiniLM text encoder), then sends 500 GET /search requests with 20 in flight from this process,
using dev captions as queries. Reports p50 / p99 / max latency, throughput and errors, against the
same service answering one request at a time (the baseline measured in the same run).

Usage: python benchmarks/bench_serve.py [--run RUN] [--requests 500 --concurrency 20]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data" / "flickr8k" / "flickr8k.npz"
IMAGES = SHARED / "data" / "flickr8k" / "images"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def fire(url: str, queries: list[str], concurrency: int) -> tuple[list[float], int]:
    """Closed-loop load: ``concurrency`` keep-alive connections, each sending its next query as soon as the
    previous answer is read. A bare HTTP/1.1 client on asyncio streams, so the load generator takes little
    of the two cores it shares with the service (httpx spends ~1 ms of CPU a request)."""
    parsed = urlsplit(url)
    pending = iter(queries)
    latencies: list[float] = []
    errors = 0

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
        try:
            for q in pending:
                request = f"GET /search?{urlencode({'q': q, 'k': 10})} HTTP/1.1\r\nHost: {parsed.netloc}\r\n\r\n"
                start = time.perf_counter()
                writer.write(request.encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"content-length:\s*(\d+)", head, re.IGNORECASE).group(1))
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
                errors += int(head.split(b" ", 2)[1]) != 200
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return latencies, errors


def describe(name: str, latencies: list[float], errors: int, wall: float) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return (
        f"{name:<26} p50 {statistics.median(ordered) * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms  "
        f"max {ordered[-1] * 1000:7.1f} ms  {len(ordered) / wall:7.1f} req/s  errors {errors}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run folder (default: a ridge run trained now)")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--text-precision", default="fp32", choices=("fp32", "bf16"))
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"{DATA} is absent: the shared data must sit beside the repo as ../shared")
    import numpy as np

    stitch = [sys.executable, "-m", "stitch.cli"]
    with tempfile.TemporaryDirectory() as scratch:
        run = args.run or str(Path(scratch) / "ridge")
        if not args.run:
            subprocess.run(
                [*stitch, "train", "--data", str(DATA), "--out", run, "--quiet", "model.name=ridge"],
                check=True,
                capture_output=True,
            )
        port = free_port()
        server = subprocess.Popen(
            [
                *stitch,
                "serve",
                "--run",
                run,
                "--data",
                str(DATA),
                "--images",
                str(IMAGES),
                "--split",
                "dev",
                "--port",
                str(port),
                "--text-precision",
                args.text_precision,
            ],
            stdout=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 120
            while True:
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline or server.poll() is not None:
                    sys.exit("the service did not start")
                time.sleep(0.5)
            npz = np.load(DATA, allow_pickle=False)
            dev = npz["images/split"][npz["captions/image_index"]] == "dev"
            # distinct texts for warm-up, baseline and load: the service caches encoded queries
            texts = list(dict.fromkeys(str(t) for t in npz["captions/text"][dev]))
            warmup, baseline, queries = texts[:20], texts[20:120], texts[120 : 120 + args.requests]
            asyncio.run(fire(url, warmup, 4))
            start = time.perf_counter()
            single, single_errors = asyncio.run(fire(url, baseline, 1))
            single_wall = time.perf_counter() - start
            start = time.perf_counter()
            loaded, errors = asyncio.run(fire(url, queries, args.concurrency))
            wall = time.perf_counter() - start
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(
        f"GET /search (MiniLM {args.text_precision} encoding + exact search + inverted softmax), "
        "gallery 1000, k 10, loopback"
    )
    print(describe("1 in flight (baseline)", single, single_errors, single_wall))
    print(describe(f"{args.concurrency} in flight, {len(loaded)} req", loaded, errors, wall))
    ratio = (len(loaded) / wall) / (len(single) / single_wall)
    print(f"throughput ratio loaded / one-at-a-time: {ratio:.2f} (micro-batching)")
    print("target: p50 < 50 ms and p99 < 200 ms under the load, zero errors")


if __name__ == "__main__":
    main()
