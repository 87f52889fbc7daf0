"""GET /metrics: Prometheus text that a strict line parser accepts, with request counts by route and status
(the guard's refusals and unhandled errors included), a cumulative /search latency histogram, the batcher's
batch sizes, the query cache's hits and misses, and the gallery's size, over a real uvicorn server."""

from __future__ import annotations

import asyncio
import math
import re
import socket
import time

import httpx
import pytest

from service_util import fake_app, running
from stitch.apps.service.metrics import Counter, Histogram, ServiceMetrics, escape_label, powers_of_two

pytest.importorskip("fastapi")

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SAMPLE = re.compile(rf"^({NAME})(?:\{{(.*)\}})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
COMMENT = re.compile(rf"^# (?:HELP {NAME} .*|TYPE {NAME} (?:counter|gauge|histogram|summary|untyped))$")


def parse(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset], float]]:
    """A tiny exposition parser: every line must be a HELP/TYPE comment or ``name{labels} value``; returns the
    declared types and the samples, keyed by name and label set. Raises AssertionError on anything else."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset], float] = {}
    for line in text[:-1].split("\n"):
        if line.startswith("#"):
            assert COMMENT.match(line), f"bad comment line: {line!r}"
            if line.startswith("# TYPE"):
                _, _, name, kind = line.split(" ")
                assert name not in types, f"{name} declared twice"
                types[name] = kind
            continue
        match = SAMPLE.match(line)
        assert match, f"bad sample line: {line!r}"
        name, inner, value = match.groups()
        labels = LABEL.findall(inner or "")
        assert ",".join(f'{k}="{v}"' for k, v in labels) == (inner or ""), f"bad labels: {line!r}"
        key = (name, frozenset(labels))
        assert key not in samples, f"sample repeated: {line!r}"
        samples[key] = float(value)  # float() takes +Inf and NaN as Prometheus writes them
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"sample {name} has no TYPE line before it"
    return types, samples


def scrape(client: httpx.Client) -> tuple[dict[str, str], dict[tuple[str, frozenset], float]]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests(samples: dict, route: str, method: str, code: int) -> float:
    return value(samples, "stitch_http_requests_total", route=route, method=method, code=str(code))


def histogram(samples: dict, name: str) -> tuple[list[tuple[float, float]], float, float]:
    """``[(le, cumulative count), ...]`` in bound order, the sum and the count."""
    buckets = sorted((float(dict(labels)["le"]), v) for (n, labels), v in samples.items() if n == f"{name}_bucket")
    return buckets, value(samples, f"{name}_sum"), value(samples, f"{name}_count")


@pytest.fixture
def service(tmp_path):
    """A fresh fake service per test (the counts start at zero); yields a client and the app's state."""
    app = fake_app(tmp_path, delay_s=0.0, max_body_bytes=2048, body_timeout_s=0.5)

    @app.get("/boom")
    def boom() -> dict:
        raise RuntimeError("an error no handler catches")

    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, app.state


def test_the_exposition_parses_and_declares_every_metric(service):
    client, _ = service
    client.get("/search", params={"q": "a dog"})
    types, samples = scrape(client)
    assert types == {
        "stitch_http_requests_total": "counter",
        "stitch_search_request_duration_seconds": "histogram",
        "stitch_search_batch_size": "histogram",
        "stitch_query_cache_hits_total": "counter",
        "stitch_query_cache_misses_total": "counter",
        "stitch_query_cache_entries": "gauge",
        "stitch_gallery_images": "gauge",
    }
    assert value(samples, "stitch_gallery_images") == 20  # FakeSearcher's gallery


def test_the_parser_refuses_malformed_lines():
    for bad in ("x{a=1} 2\n", 'x{a="1"} \n', "x 1 2 3\n", "# nonsense\n", '# TYPE x counter\nx{a="1",} 2\n', "x 1"):
        with pytest.raises(AssertionError):
            parse(bad)


def test_requests_are_counted_by_route_method_and_status(service):
    client, _ = service
    n_ok, n_bad = 5, 3
    for i in range(n_ok):
        assert client.get("/search", params={"q": f"query {i}"}).status_code == 200
    assert client.post("/search", json={"text": "posted", "k": 3}).status_code == 200
    bad = [client.get("/search", params={"q": "x", "k": 0}), client.get("/search", params={"q": "   "})]
    bad.append(client.post("/search", json={"text": "a", "embedding": [0.0] * 8}))
    assert [r.status_code for r in bad] == [422] * n_bad
    for name in ("nope.jpg", "other.jpg"):
        assert client.get(f"/images/{name}").status_code == 404
    for path in ("/nowhere", "/also/nowhere", "/x?y=z"):
        assert client.get(path).status_code == 404
    assert client.request("BREW", "/search").status_code == 405  # any token is a method to HTTP
    _, samples = scrape(client)
    assert requests(samples, "/search", "GET", 200) == n_ok
    assert requests(samples, "/search", "POST", 200) == 1
    assert requests(samples, "/search", "GET", 422) == 2 and requests(samples, "/search", "POST", 422) == 1
    assert requests(samples, "/images/{name}", "GET", 404) == 2  # the route template, not each raw name
    assert requests(samples, "other", "GET", 404) == 3  # unknown paths share one series
    assert requests(samples, "/search", "other", 405) == 1  # and unknown methods
    series = [labels for name, labels in samples if name == "stitch_http_requests_total"]
    assert len(series) == 7  # no series per raw path or method: the label values stay a small fixed set
    _, samples = scrape(client)
    assert requests(samples, "/metrics", "GET", 200) == 1  # the first scrape, counted once answered


def test_the_search_latency_histogram_is_cumulative_and_counts_every_search(service):
    client, _ = service
    for i in range(7):
        client.get("/search", params={"q": f"dog {i % 3}", "k": 2})
    client.post("/search", json={"embedding": [0.1] * 8})
    client.get("/search", params={"q": "x", "k": 0})  # a 422 is a search answered too
    client.get("/health")  # not a search
    _, samples = scrape(client)
    buckets, total, count = histogram(samples, "stitch_search_request_duration_seconds")
    bounds = [le for le, _ in buckets]
    assert bounds[0] == 0.001 and bounds[-2] == 10.0 and math.isinf(bounds[-1])
    counts = [c for _, c in buckets]
    assert counts == sorted(counts), "buckets must be cumulative"
    assert count == 9 and counts[-1] == count  # +Inf holds every observation
    assert 0 < total < count * 10.0


def test_batch_sizes_count_the_batches_formed(tmp_path):
    """Sequential searches form batches of one; a concurrent burst against a slow encoder forms fewer, larger
    batches: the histogram counts batches, and its sum is the number of queries that joined one."""
    app = fake_app(tmp_path, delay_s=0.05)
    searcher = app.state.searcher
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        for i in range(3):
            client.get("/search", params={"q": f"alone {i}"})
        _, samples = scrape(client)
        buckets, total, count = histogram(samples, "stitch_search_batch_size")
        assert count == 3 and total == 3 and buckets[0] == (1.0, 3)

        async def burst() -> list[int]:
            async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=24)) as ac:
                replies = await asyncio.gather(*(ac.get("/search", params={"q": f"burst {i}"}) for i in range(24)))
            return [r.status_code for r in replies]

        assert asyncio.run(burst()) == [200] * 24
        _, samples = scrape(client)
    buckets, total, count = histogram(samples, "stitch_search_batch_size")
    assert total == 3 + 24 and count == len(searcher.calls) and sum(searcher.calls) == total
    assert count < 3 + 24, "a burst against a 50 ms encoder must share batches"
    assert [le for le, _ in buckets][:-1] == [1, 2, 4, 8, 16, 32, 64]  # up to the batcher's max_batch
    assert buckets[-1][1] == count


def test_repeated_queries_count_cache_hits(service):
    client, state = service
    _, samples = scrape(client)
    assert value(samples, "stitch_query_cache_hits_total") == value(samples, "stitch_query_cache_misses_total") == 0
    for _ in range(3):
        client.get("/search", params={"q": "a red bike"})
    client.get("/search", params={"q": "a blue bike"})
    client.post("/search", json={"embedding": [0.2] * 8})  # no text: neither a hit nor a miss
    _, samples = scrape(client)
    assert value(samples, "stitch_query_cache_hits_total") == 2
    assert value(samples, "stitch_query_cache_misses_total") == 2
    assert value(samples, "stitch_query_cache_entries") == 2
    assert state.encoder.calls == [1, 1]  # the hits really skipped the encoder


def test_guard_refusals_and_unhandled_errors_are_counted(service):
    """413 and 408 come from the body guard, before routing; an exception no handler catches is answered
    500 outside every middleware. All three are counted, under the route the request was for."""
    client, _ = service
    big = client.post("/search", content=b"x" * 4096, headers={"content-type": "application/json"})
    assert big.status_code == 413
    with socket.create_connection(("127.0.0.1", client.base_url.port), timeout=10) as sock:
        sock.sendall(
            b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        reply = sock.recv(4096)  # the guard's 0.5 s body deadline passes first
    assert reply.startswith(b"HTTP/1.1 408 ")
    # its own connection: uvicorn drops a connection whose app raised, so a pooled one would be reset next use
    assert httpx.get(client.base_url.join("/boom"), timeout=30).status_code == 500
    deadline = time.time() + 5
    while True:  # the 408's record is written as its handler returns, just after the reply is sent
        _, samples = scrape(client)
        if requests(samples, "/search", "POST", 408) or time.time() > deadline:
            break
        time.sleep(0.05)
    assert requests(samples, "/search", "POST", 413) == 1
    assert requests(samples, "/search", "POST", 408) == 1
    assert requests(samples, "/boom", "GET", 500) == 1


def test_a_poisoned_burst_is_counted_query_by_query(tmp_path):
    """Metrics do not change isolation: in a concurrent burst one query breaks the encoder; it alone is a 500,
    every other one a 200, and each is counted once."""
    app = fake_app(tmp_path, delay_s=0.05)
    with running(app) as url:

        async def burst() -> list[int]:
            async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=20)) as ac:
                texts = [f"innocent {i}" if i != 7 else "a skull \u2620" for i in range(20)]
                replies = await asyncio.gather(*(ac.post("/search", json={"text": t}) for t in texts))
                return [r.status_code for r in replies]

        codes = asyncio.run(burst())
        with httpx.Client(base_url=url, timeout=30) as client:
            _, samples = scrape(client)
    assert codes == [200] * 7 + [500] + [200] * 12
    assert requests(samples, "/search", "POST", 200) == 19 and requests(samples, "/search", "POST", 500) == 1
    assert histogram(samples, "stitch_search_request_duration_seconds")[2] == 20


def test_histogram_bounds_are_inclusive_and_counts_cumulative():
    hist = Histogram("h", "a test histogram", [0.01, 0.001, 0.1])  # any order: sorted
    for v in (0.0005, 0.001, 0.002, 0.1, 5.0):
        hist.observe(v)
    cumulative, total, count = hist.snapshot()
    assert hist.bounds == (0.001, 0.01, 0.1) and cumulative == [2, 3, 4, 5]  # le: at most the bound
    assert count == 5 and total == pytest.approx(5.1035)
    types, samples = parse("\n".join(hist.lines()) + "\n")
    assert types == {"h": "histogram"} and value(samples, "h_bucket", le="+Inf") == 5
    with pytest.raises(ValueError):
        Histogram("bad", "no finite bounds", [float("inf")])


def test_label_values_are_escaped_and_names_unique():
    counter = Counter("c_total", "a test counter", ("path",))
    counter.inc('a "quoted" \\ back\nslash')
    with pytest.raises(ValueError):
        counter.inc("one", "too many")
    _, samples = parse("\n".join(counter.lines()) + "\n")
    assert list(samples.values()) == [1.0]
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    metrics = ServiceMetrics()
    with pytest.raises(ValueError):
        metrics.add(Counter("stitch_http_requests_total", "a second one"))
    assert powers_of_two(64) == [1, 2, 4, 8, 16, 32, 64] and powers_of_two(10) == [1, 2, 4, 8, 10]
