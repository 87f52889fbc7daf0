"""Search-service latency under a bounded load on loopback, text encoding included, per encoder path.

For each path (``NAME=ENCODER,RUN,DATA``: the text encoder spec, a run trained in that encoder's space,
the data whose dev images form the gallery) it first measures the bare encoder in this process — the
same dev caption texts, in batches of 20 (the requests in flight) — and, alternating with it, the encoder
followed by the service's own search of the same gallery (no HTTP: the ceiling of any service on this
machine), then starts ``stitch serve`` in its own process and sends 100 GET /search requests one at a
time and three rounds of 500 with 20 in flight (ratios use the best round). It
reports p50 / p99 / max, throughput, the service's loaded throughput as a fraction of the bare encoder's
(the service's overhead budget) and of the encoder + search, errors, and the dev R@1 / MRR of the run it
serves. As the load generator shares the cores, it also reads the service process's CPU time under load
(Linux ``/proc``) and compares the CPU per request with the bare encoder's CPU per text at the batch size
the service formed: the difference is what the service adds beyond the encoder. Texts are distinct
across warm-up, baseline and load, so the service's query cache does not flatter it.

Usage: python benchmarks/bench_serve.py --path minilm=minilm,RUN,DATA --path static=static:DIR,RUN2,DATA2
(default: one path, MiniLM with a ridge run trained now on Flickr8k)
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


def in_process(encoder, searcher, texts: list[str], batch: int, rounds: int = 5) -> tuple[float, float, float]:
    """(texts per second, CPU ms per text) of the encoder alone — no HTTP, no search — and (queries per
    second) of the encoder followed by the service's own search (top 10) on each batch: the most any HTTP
    layer could reach here. The two alternate, ``rounds`` times after a warm-up, best of each, so a slow
    spell of this shared machine does not fall on one of them only."""

    def one_pass(search: bool) -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(texts), batch):
            rows = encoder.encode(texts[i : i + batch])
            if search:
                searcher.search(rows, 10)
        return len(texts) / (time.perf_counter() - start), (time.process_time() - cpu) * 1000 / len(texts)

    searcher.search(encoder.encode(texts[:batch]), 10)
    bare, cpu_ms, searched = 0.0, float("inf"), 0.0
    for _ in range(rounds):
        rate, cpu = one_pass(search=False)
        bare, cpu_ms = max(bare, rate), min(cpu_ms, cpu)
        searched = max(searched, one_pass(search=True)[0])
    return bare, cpu_ms, searched


def in_process_child(request: str) -> None:
    """``--in-process JSON``: the in-process figures for one path, printed as a JSON line. A child of its own
    so the encoder's and the search's thread pools wait between parallel regions as its environment says."""
    from stitch import api
    from stitch.encoders.text import text_encoder

    job = json.loads(request)
    data = api.load(job["data"])
    searcher = api.open_searcher(api.open(job["run"]), data, "dev")  # the service's own gallery and scoring
    encoder = text_encoder(job["spec"])
    figures = {}
    for batch in job["batches"]:
        bare, cpu_ms, searched = in_process(encoder, searcher, job["texts"], batch)
        figures[str(batch)] = {"bare": bare, "cpu_ms": cpu_ms, "searched": searched}
    print(json.dumps(figures))


def in_process_figures(spec: str, run: str, data: str, texts: list[str], batches: list[int], policy: str | None):
    """{batch: {bare, cpu_ms, searched}} measured in a child process whose OpenMP wait policy is ``policy``
    (None: the library default, spinning a while; "PASSIVE": what ``stitch serve`` sets)."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    job = json.dumps({"spec": spec, "run": run, "data": data, "texts": texts, "batches": batches})
    done = subprocess.run(
        [sys.executable, __file__, "--in-process", job], env=env, capture_output=True, text=True, check=True
    )
    return {int(batch): row for batch, row in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_service(
    run: str, data: str, spec: str, env: dict[str, str] | None = None, extra: list[str] | None = None
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "stitch", "serve", "--run", run, "--data", data, "--image-dir", str(IMAGES)]
    command += ["--split", "dev", "--port", str(port), "--text-encoder", spec, *(extra or [])]
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
    name: str,
    spec: str,
    run: str,
    data: str,
    texts: list[str],
    requests: int,
    concurrency: int,
    env: dict[str, str],
    serve_args: list[str] | None = None,
    loaded_rounds: int = 3,
) -> None:
    from stitch import api

    t2i = api.evaluate(run, api.load(data), split="dev")[0]
    server, url = start_service(run, data, spec, env, serve_args)
    try:
        asyncio.run(fire(url, texts[:20], 4))  # warm-up
        start = time.perf_counter()
        single, single_errors = asyncio.run(fire(url, texts[20:120], 1))
        single_wall = time.perf_counter() - start
        rounds = []  # (req/s, latencies, errors, service CPU s, load generator CPU s, batch totals)
        for r in range(loaded_rounds):
            before = batch_totals(url)
            start, server_cpu, client_cpu = time.perf_counter(), process_cpu_s(server.pid), time.process_time()
            round_texts = texts[120 + r * requests : 120 + (r + 1) * requests]
            latencies, errors = asyncio.run(fire(url, round_texts, concurrency))
            wall = time.perf_counter() - start
            server_cpu, client_cpu = process_cpu_s(server.pid) - server_cpu, time.process_time() - client_cpu
            after = batch_totals(url)
            rounds.append((len(latencies) / wall, latencies, errors, server_cpu, client_cpu, before, after))
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(
        f"[{name}] encoder {spec}; run {run}: dev {t2i.label()} R@1 {t2i.metrics['recall@1']:.3f} "
        f"MRR {t2i.metrics['mrr']:.3f}"
    )
    print("  " + describe("1 in flight", single, single_errors, single_wall))
    for rate, latencies, errors, *_ in rounds:
        print(
            "  " + describe(f"{concurrency} in flight, {len(latencies)} req", latencies, errors, len(latencies) / rate)
        )
    # the best round, as the in-process figures are the best of theirs
    throughput, loaded, _, server_cpu, client_cpu, before, after = max(rounds, key=lambda item: item[0])
    mean_batch = (after[0] - before[0]) / max(after[1] - before[1], 1)
    # with continuous batching even a service that cost nothing would form two alternating groups of about
    # concurrency / 2, so the figures at the batch size the service formed separate the service's own
    # overhead from the batching policy. Each in-process figure is the best of two wait policies (the
    # default and the service's): the bare encoder at its fastest is the bar, and the ceiling is the most
    # encoder + search can do here.
    formed = max(1, round(mean_batch))
    service_policy = env.get("OMP_WAIT_POLICY", "PASSIVE")  # what `stitch serve` sets unless told otherwise
    sample = texts[120 : 120 + requests]
    policies = {
        policy: in_process_figures(spec, run, data, sample, sorted({20, formed}), policy)
        for policy in (None, service_policy)
    }
    best = {
        batch: {key: max(figures[batch][key] for figures in policies.values()) for key in ("bare", "searched")}
        for batch in (20, formed)
    }
    bare = best[20]["bare"]
    print(f"  bare encoder, batches of 20: {bare:7.1f} texts/s (best of both wait policies)")
    for batch in sorted({20, formed}, reverse=True):
        searched = best[batch]["searched"]
        print(
            f"  encoder + search, no HTTP, batches of {batch}: {searched:7.1f} queries/s = {searched / bare:.2f} "
            f"of the bare encoder; the loaded service reaches {throughput / searched:.2f} of it"
        )
    print(
        f"  loaded service (best of {len(rounds)} rounds) / bare encoder: {throughput / bare:.2f} "
        f"(/ bare encoder in batches of {formed}, as formed: {throughput / best[formed]['bare']:.2f}); "
        f"mean batch {mean_batch:.1f}"
    )
    encoder_cpu_ms = policies[service_policy][formed]["cpu_ms"]
    # CPU time, not wall time: the load generator shares the cores, so the service's own bill per request
    # against the encoder's per text is what the service adds, whoever else runs on the machine
    service_cpu_ms = server_cpu * 1000 / len(loaded)
    print(
        f"  CPU per request: service {service_cpu_ms:.2f} ms, encoder alone {encoder_cpu_ms:.2f} ms per text "
        f"(batches of {formed}, the service's wait policy): the service adds {service_cpu_ms - encoder_cpu_ms:.2f} ms "
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
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="add to `stitch serve` (--serve-arg=--regather-ms=0)",
    )
    parser.add_argument("--in-process", metavar="JSON", help=argparse.SUPPRESS)  # the child of in_process_figures
    args = parser.parse_args()
    if args.in_process:
        return in_process_child(args.in_process)
    env = dict(item.split("=", 1) for item in args.server_env)
    if not DATA.exists():
        sys.exit(f"{DATA} is absent: the shared data must sit beside the repo as ../shared")
    import numpy as np

    npz = np.load(DATA, allow_pickle=False)
    dev = npz["images/split"][npz["captions/image_index"]] == "dev"
    texts = list(dict.fromkeys(str(t) for t in npz["captions/text"][dev]))
    print(f"GET /search, dev gallery 1000, k 10, the run's own scoring, loopback; {time.strftime('%Y-%m-%d %H:%M')}")
    if env or args.serve_arg:
        print(f"service environment: {env}; extra serve arguments: {args.serve_arg}")
    with tempfile.TemporaryDirectory() as scratch:
        paths = args.path or [f"minilm=minilm,{Path(scratch) / 'ridge'},{DATA}"]
        for item in paths:
            name, _, rest = item.partition("=")
            spec, run, data = rest.split(",")
            if not Path(run).exists():
                command = [sys.executable, "-m", "stitch", "train", "--data", data, "--out", run, "--quiet"]
                subprocess.run([*command, "model.name=ridge"], check=True, capture_output=True)
            measure_path(name, spec, run, data, texts, args.requests, args.concurrency, env, args.serve_arg)
    print(
        "targets: loaded throughput >= 0.9 of the bare encoder (MiniLM paths); static path p50 < 50 ms and "
        "p99 < 200 ms with 20 in flight; zero errors"
    )


if __name__ == "__main__":
    main()
