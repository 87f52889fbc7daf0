"""Search-service latency under a bounded load on loopback, text encoding included, per encoder path.

For each path (``NAME=ENCODER,RUN,DATA``: the text encoder spec, a run trained in that encoder's space,
the data whose dev images form the gallery) it first measures the bare encoder in this process — the
same dev caption texts, in batches of 20 (what 20 requests in flight form) — then starts ``stitch serve``
in its own process and sends 500 GET /search requests with 20 in flight, and 100 one at a time. It
reports p50 / p99 / max, throughput, the service's loaded throughput as a fraction of the bare encoder's
(the service's overhead budget), errors, and the dev R@1 / MRR of the run it serves. As the load generator
shares the cores, it also reads the service process's CPU time under load (Linux ``/proc``) and compares the
CPU per request with the bare encoder's CPU per text at the batch size the service formed: the difference is
what the service adds beyond the encoder. Texts are distinct
across warm-up, baseline and load, so the service's query cache does not flatter it.

Usage: python benchmarks/bench_serve.py --path minilm=minilm,RUN,DATA --path static=static:DIR,RUN2,DATA2
(default: one path, MiniLM with a ridge run trained now on Flickr8k)
"""

from __future__ import annotations

import argparse
import asyncio
import os
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


def bare_encoder(encoder, texts: list[str], batch: int = 20) -> tuple[float, float]:
    """(texts per second, CPU ms per text) of the encoder alone (no HTTP, no search), after a warm-up,
    best of 3."""
    encoder.encode(texts[:batch])
    best, cpu_ms = 0.0, float("inf")
    for _ in range(3):
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(texts), batch):
            encoder.encode(texts[i : i + batch])
        best = max(best, len(texts) / (time.perf_counter() - start))
        cpu_ms = min(cpu_ms, (time.process_time() - cpu) * 1000 / len(texts))
    return best, cpu_ms


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_service(run: str, data: str, spec: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "stitch", "serve", "--run", run, "--data", data, "--image-dir", str(IMAGES)]
    command += ["--split", "dev", "--port", str(port), "--text-encoder", spec]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        if time.time() > deadline or server.poll() is not None:
            server.kill()
            sys.exit(f"the service for {run} did not start")
        time.sleep(0.5)


def batch_totals(url: str) -> tuple[float, float]:
    """(queries, batches) the service's micro-batcher has formed so far, from its Prometheus histogram."""
    text = httpx.get(url + "/metrics", timeout=10).text
    total = re.search(r"^stitch_search_batch_size_sum (\S+)$", text, re.MULTILINE)
    count = re.search(r"^stitch_search_batch_size_count (\S+)$", text, re.MULTILINE)
    return float(total.group(1)), float(count.group(1))


def measure_path(
    name: str, spec: str, run: str, data: str, texts: list[str], requests: int, concurrency: int, env: dict[str, str]
):
    from stitch import api
    from stitch.encoders.text import text_encoder

    t2i = api.evaluate(run, api.load(data), split="dev")[0]
    encoder = text_encoder(spec)  # loaded once, measured at both batch sizes
    bare, _ = bare_encoder(encoder, texts[120 : 120 + requests])
    server, url = start_service(run, data, spec, env)
    try:
        asyncio.run(fire(url, texts[:20], 4))  # warm-up
        start = time.perf_counter()
        single, single_errors = asyncio.run(fire(url, texts[20:120], 1))
        single_wall = time.perf_counter() - start
        before = batch_totals(url)
        start, server_cpu, client_cpu = time.perf_counter(), process_cpu_s(server.pid), time.process_time()
        loaded, errors = asyncio.run(fire(url, texts[120 : 120 + requests], concurrency))
        wall = time.perf_counter() - start
        server_cpu, client_cpu = process_cpu_s(server.pid) - server_cpu, time.process_time() - client_cpu
        after = batch_totals(url)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(
        f"[{name}] encoder {spec}; run {run}: dev {t2i.label()} R@1 {t2i.metrics['recall@1']:.3f} "
        f"MRR {t2i.metrics['mrr']:.3f}"
    )
    print(f"  bare encoder, batches of 20: {bare:7.1f} texts/s")
    print("  " + describe("1 in flight", single, single_errors, single_wall))
    print("  " + describe(f"{concurrency} in flight, {len(loaded)} req", loaded, errors, wall))
    mean_batch = (after[0] - before[0]) / max(after[1] - before[1], 1)
    print(f"  loaded service / bare encoder throughput: {len(loaded) / wall / bare:.2f}; mean batch {mean_batch:.1f}")
    # with continuous batching even a service that cost nothing would form two alternating groups of about
    # concurrency / 2, so the encoder alone at the batch size the service formed separates the service's own
    # overhead from the batching policy (both ratios are printed)
    formed = max(1, round(mean_batch))
    bare_formed, encoder_cpu_ms = bare_encoder(encoder, texts[120 : 120 + requests], formed)
    print(
        f"  bare encoder, batches of {formed} (as formed): {bare_formed:7.1f} texts/s; "
        f"loaded service / that: {len(loaded) / wall / bare_formed:.2f}"
    )
    # CPU time, not wall time: the load generator shares the cores, so the service's own bill per request
    # against the encoder's per text is what the service adds, whoever else runs on the machine
    service_cpu_ms = server_cpu * 1000 / len(loaded)
    print(
        f"  CPU per request: service {service_cpu_ms:.2f} ms, encoder alone {encoder_cpu_ms:.2f} ms per text "
        f"(batches of {formed}): the service adds {service_cpu_ms - encoder_cpu_ms:.2f} ms "
        f"(encoder share {encoder_cpu_ms / service_cpu_ms:.2f})"
    )
    # the load generator shares the same cores: its own CPU per request says how much of the gap is its
    print(f"  load generator CPU per request: {client_cpu * 1000 / len(loaded):.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", action="append", metavar="NAME=ENCODER,RUN,DATA", help="a path to measure")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="KEY=VALUE", help="set in the service's environment only"
    )
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.server_env)
    if not DATA.exists():
        sys.exit(f"{DATA} is absent: the shared data must sit beside the repo as ../shared")
    import numpy as np

    npz = np.load(DATA, allow_pickle=False)
    dev = npz["images/split"][npz["captions/image_index"]] == "dev"
    texts = list(dict.fromkeys(str(t) for t in npz["captions/text"][dev]))
    print(f"GET /search, dev gallery 1000, k 10, the run's own scoring, loopback; {time.strftime('%Y-%m-%d %H:%M')}")
    if env:
        print(f"service environment: {env}")
    with tempfile.TemporaryDirectory() as scratch:
        paths = args.path or [f"minilm=minilm,{Path(scratch) / 'ridge'},{DATA}"]
        for item in paths:
            name, _, rest = item.partition("=")
            spec, run, data = rest.split(",")
            if not Path(run).exists():
                command = [sys.executable, "-m", "stitch", "train", "--data", data, "--out", run, "--quiet"]
                subprocess.run([*command, "model.name=ridge"], check=True, capture_output=True)
            measure_path(name, spec, run, data, texts, args.requests, args.concurrency, env)
    print(
        "targets: loaded throughput >= 0.9 of the bare encoder (MiniLM paths); static path p50 < 50 ms and "
        "p99 < 200 ms with 20 in flight; zero errors"
    )


if __name__ == "__main__":
    main()
