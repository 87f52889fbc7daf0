"""Prometheus metrics for the search service, written in the text exposition format (version 0.0.4).

Written here rather than with ``prometheus_client``: the service needs a handful of metrics, and a new
dependency for them is not worth it. What ``GET /metrics`` shows (names in :class:`ServiceMetrics`):

- requests answered, by route template, method and status code, the guard's 413/408/400 refusals and CORS
  preflights included (:class:`RequestMetrics` is the outermost middleware, so it sees every answer);
- the latency of ``GET``/``POST /search`` (any status), the sizes of the batches the micro-batcher forms,
  the query cache's hits, misses and entries, and the gallery's size.

Cheap: an update is an uncontended lock and an add, on the event loop; values kept elsewhere (the gallery,
the batcher's counters) are read only when scraped. Bounded: labels take values from fixed sets (route
templates, never raw paths; known methods; status codes), so a scan of random URLs cannot grow the output.
A request whose client left before any answer was sent is not counted (there is no status to count).
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from starlette.routing import Match

from stitch.apps.service.guard import ASGIApp, Message, Receive, Scope, Send
from stitch.errors import UsageError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# seconds, from 1 ms (a cached query on a small gallery) to 10 s (a client's usual give-up point)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
TIMED_METHODS = frozenset({"GET", "POST"})  # a CORS preflight to /search is not a search


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it: ints as ints, ``+Inf``/``-Inf``/``NaN`` spelled its way."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def escape_label(value: str) -> str:
    """A label value escaped as the format asks (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def sample(name: str, labels: dict[str, str], value: float) -> str:
    """One sample line: ``name{label="value",...} value``."""
    if not labels:
        return f"{name} {format_value(value)}"
    inner = ",".join(f'{key}="{escape_label(str(val))}"' for key, val in labels.items())
    return f"{name}{{{inner}}} {format_value(value)}"


def header(name: str, kind: str, help_text: str) -> list[str]:
    """The ``# HELP`` and ``# TYPE`` comments that open a metric's block."""
    text = help_text.replace("\\", "\\\\").replace("\n", "\\n")
    return [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]


class Counter:
    """A counter by label values; the caller keeps the label values to a small fixed set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        self.name, self.help, self.labelnames = name, help_text, tuple(labelnames)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *labelvalues: str, amount: float = 1) -> None:
        """Add ``amount`` to the series with these label values (one per label name)."""
        if len(labelvalues) != len(self.labelnames):
            raise UsageError(f"{self.name} takes labels {self.labelnames}, got {labelvalues}")
        with self._lock:
            self._values[labelvalues] = self._values.get(labelvalues, 0) + amount

    def get(self, *labelvalues: str) -> float:
        """The current value of one series (0 if never incremented)."""
        with self._lock:
            return self._values.get(tuple(labelvalues), 0)

    def lines(self) -> list[str]:
        """The exposition lines: one sample per series, sorted so the output is stable."""
        with self._lock:
            items = sorted(self._values.items())
        samples = [sample(self.name, dict(zip(self.labelnames, key)), value) for key, value in items]
        return header(self.name, self.kind, self.help) + samples


class Histogram:
    """Observations counted into fixed buckets (``le``: at most the bound), with their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Iterable[float]) -> None:
        bounds = tuple(sorted({float(b) for b in buckets}))
        if not bounds or not all(math.isfinite(b) for b in bounds):
            raise UsageError(f"{name} needs finite bucket bounds, got {bounds}")
        self.name, self.help, self.bounds = name, help_text, bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self._sum, self._count = 0.0, 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        """Count one observation (a bisection and three adds under the lock)."""
        slot = bisect_left(self.bounds, value)
        with self._lock:
            self._counts[slot] += 1
            self._sum += value
            self._count += 1

    def snapshot(self) -> tuple[list[int], float, int]:
        """Cumulative bucket counts (``+Inf`` last), the sum and the count, read together."""
        with self._lock:
            counts, total, count = list(self._counts), self._sum, self._count
        cumulative, running = [], 0
        for n in counts:
            running += n
            cumulative.append(running)
        return cumulative, total, count

    def lines(self) -> list[str]:
        """The exposition lines: ``_bucket`` per bound and ``+Inf``, then ``_sum`` and ``_count``."""
        cumulative, total, count = self.snapshot()
        bounds = [format_value(b) for b in self.bounds] + ["+Inf"]
        buckets = [sample(f"{self.name}_bucket", {"le": le}, n) for le, n in zip(bounds, cumulative)]
        tail = [sample(f"{self.name}_sum", {}, total), sample(f"{self.name}_count", {}, count)]
        return header(self.name, self.kind, self.help) + buckets + tail


class Reading:
    """A value read only when scraped, from state kept elsewhere: nothing to update on the hot path."""

    def __init__(self, name: str, help_text: str, kind: str, read: Callable[[], float]) -> None:
        if kind not in ("counter", "gauge"):
            raise UsageError(f"a reading is a counter or a gauge, not {kind!r}")
        self.name, self.help, self.kind, self.read = name, help_text, kind, read

    def lines(self) -> list[str]:
        """The exposition lines: one unlabelled sample."""
        return header(self.name, self.kind, self.help) + [sample(self.name, {}, self.read())]


def powers_of_two(top: int) -> list[int]:
    """Bucket bounds 1, 2, 4, ... up to and including ``top`` (batch sizes)."""
    bounds = [1]
    while bounds[-1] < top:
        bounds.append(min(bounds[-1] * 2, top))
    return bounds


class ServiceMetrics:
    """The service's metrics, in the order they are written. The request counter and the search latency are
    fed by :class:`RequestMetrics`; other metrics join with :meth:`add`."""

    def __init__(self) -> None:
        self.requests = Counter(
            "stitch_http_requests_total",
            "HTTP requests answered, by route, method and status code",
            ("route", "method", "code"),
        )
        self.search_latency = Histogram(
            "stitch_search_request_duration_seconds",
            "Time to answer GET or POST /search (any status), body read and encoding included, in seconds",
            LATENCY_BUCKETS,
        )
        self.metrics: list[Any] = [self.requests, self.search_latency]

    def add(self, metric: Any) -> Any:
        """Register ``metric`` (anything with ``name`` and ``lines()``); names must be unique."""
        if any(m.name == metric.name for m in self.metrics):
            raise UsageError(f"a metric named {metric.name!r} is already registered")
        self.metrics.append(metric)
        return metric

    def record(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request; a search's latency goes into the histogram too."""
        self.requests.inc(route, method, str(status))
        if route == "/search" and method in TIMED_METHODS:
            self.search_latency.observe(seconds)

    def render(self) -> str:
        """The whole exposition, newline-terminated."""
        return "\n".join(line for metric in self.metrics for line in metric.lines()) + "\n"


def route_label(router: Any, scope: Scope) -> str:
    """The template of the route ``scope`` goes to (``/images/{name}``, never the raw path), or ``other``.

    Matched before the app runs, so requests the guard refuses before routing get their route too."""
    partial = None
    try:
        for route in router.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return getattr(route, "path", "other")
            if match is Match.PARTIAL and partial is None:  # the path matches, the method does not (405)
                partial = getattr(route, "path", "other")
    except Exception:  # a metric label is never worth failing a request for
        return "other"
    return partial or "other"


class RequestMetrics:
    """Pure ASGI middleware, added last so it is outermost: it sees the status of every answer, the guard's
    refusals and CORS preflights included, and a request the app raised on (answered 500 further out)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, router: Any) -> None:
        self.app, self.metrics, self.router = app, metrics, router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_label(self.router, scope)
        method = scope.get("method", "")
        method = method if method in METHODS else "other"
        status: int | None = None

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        except Exception:
            if status is None:
                status = 500  # Starlette's ServerErrorMiddleware, outside this one, answers 500
            raise
        finally:
            if status is not None:
                self.metrics.record(route, method, status, time.perf_counter() - start)
