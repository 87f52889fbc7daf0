"""Micro-batching: concurrent queries share one encoder and one search call.

The worker takes every query queued when it is free, so a lone query goes straight through, and under load
the queries that arrive while a batch is encoded form the next one (continuous batching). Alone, that
splits steady load into two alternating half-batches: with 20 callers each sending its next query as soon
as it has an answer, the 10 answered while the other 10 wait form batches of 10, and the event loop's HTTP
work interleaves with the encoder's threads on the same cores. So the worker also expects the callers it
has just answered to come back: when fewer queries are queued than the last batch held plus those that
waited behind it, it waits up to ``regather_ms`` for them. Steady load then forms one full batch, encoded
while the event loop is idle, and answered while the encoder is idle (`benchmarks/bench_serve.py`, MiniLM,
20 in flight, two runs each: 218 / 223 req/s without, 267 / 248 with). A lone caller never waits (its
last batch held one query); when load drops, one batch waits at most ``regather_ms``; 0 turns it off.
``max_wait_ms > 0`` holds every batch open that long for more arrivals.

One request must not break its neighbours: each query is checked on its own before it joins a batch
(:mod:`stitch.apps.service.validation`), and a batch whose shared call still fails is split in halves and
retried until the error reaches only the query at fault (``log2(batch)`` extra calls for one bad query).

Encoded queries are kept in a small LRU cache (``cache_size`` texts): repeated searches — a page
reload, a popular query, the next page of results — skip the encoder, the costly part.

For ``GET /metrics`` it keeps ``batch_sizes`` (a histogram of the batches it forms) and the cache's
``cache_hits`` and ``cache_misses`` (queries answered, counted once a batch's shared calls succeed, so a
batch split to isolate a bad query is not counted twice)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from stitch.apps.service.config import DEFAULT_REGATHER_MS, check_wait_ms
from stitch.apps.service.metrics import Histogram, powers_of_two
from stitch.apps.service.validation import QueryError, check_embedding, check_text


class MicroBatcher:
    def __init__(
        self,
        searcher,
        text_encoder=None,
        max_batch: int = 64,
        max_wait_ms: float = 0.0,
        cache_size: int = 4096,
        regather_ms: float = DEFAULT_REGATHER_MS,
    ) -> None:
        self.searcher, self.text_encoder = searcher, text_encoder
        self.max_batch = max_batch
        self.max_wait = check_wait_ms("max_wait_ms", max_wait_ms) / 1000
        self.regather = check_wait_ms("regather_ms", regather_ms) / 1000
        self.cache: OrderedDict[str, np.ndarray] = OrderedDict()  # touched only by the executor's one thread
        self.cache_size, self.cache_hits, self.cache_misses = cache_size, 0, 0
        self.batch_sizes = Histogram(
            "stitch_search_batch_size", "Queries per batch the micro-batcher formed", powers_of_two(max_batch)
        )  # observed on the event loop only
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stitch-search")

    def _ensure_started(self) -> None:
        if self.worker is None or self.worker.done():
            self.queue = asyncio.Queue()
            self.worker = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, text: str | None, embedding: Sequence[float] | np.ndarray | None, k: int) -> list:
        """Hits for one query (text, or a raw caption embedding); raises QueryError on bad input.

        The query is checked here, before it is queued, so a bad one is refused without touching a batch."""
        if (text is None) == (embedding is None):
            raise QueryError("send exactly one of a text or an embedding")
        if text is not None:
            if self.text_encoder is None:
                raise QueryError("this service has no text encoder: send a raw embedding")
            row = None
            text = check_text(text)
        else:
            row = check_embedding(embedding, self.searcher.text_dim)
        self._ensure_started()
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((text, row, k, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        expected = 1  # queries likely soon: the last batch's callers coming back, and those waiting behind it
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            started, target = time.perf_counter(), min(self.max_batch, expected)
            while len(batch) < self.max_batch:
                # open for max_wait, and up to regather while the callers just answered are still to come back
                hold = max(self.max_wait, self.regather if len(batch) < target else 0.0)
                remaining = started + hold - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            self.batch_sizes.observe(len(batch))
            try:
                results = await loop.run_in_executor(self.executor, self._settle, batch)
            except Exception as err:  # the executor itself failed: nothing ran, so no query is at fault
                results = [err] * len(batch)
            expected = len(batch) + self.queue.qsize()
            for (_, _, _, future), result in zip(batch, results):
                if future.done():  # the caller went away
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _settle(self, batch: list) -> list:
        """One result (hits or the exception) per query. A failing shared call is retried on each half, so a
        query that breaks the encoder or the searcher fails alone and its neighbours still get their hits."""
        try:
            return self._process(batch)
        except Exception as err:
            if len(batch) == 1:
                return [err]
            middle = len(batch) // 2
            return self._settle(batch[:middle]) + self._settle(batch[middle:])

    def _process(self, batch: list) -> list:
        rows, missing, hits = self._cached_rows(batch)
        if missing:
            encoded = self.text_encoder.encode(list(missing))
            if len(encoded) != len(missing):
                raise RuntimeError(f"the text encoder returned {len(encoded)} rows for {len(missing)} texts")
            for (text, positions), row in zip(missing.items(), encoded):
                for i in positions:
                    rows[i] = row
                if self.cache_size > 0:
                    self.cache[text] = row.copy()  # a copy: a view would keep the whole batch alive
                    if len(self.cache) > self.cache_size:
                        self.cache.popitem(last=False)
        for i, (_, row, _, _) in enumerate(batch):
            if row is not None:
                rows[i] = row
        k_max = max(k for _, _, k, _ in batch)
        hits_by_row = self.searcher.search(np.stack(rows), k_max)
        # counted once the shared calls succeeded: a batch that fails is retried in halves, counted there
        self.cache_hits += hits
        self.cache_misses += sum(len(positions) for positions in missing.values())
        return [self._checked_hits(row_hits[:k], text) for row_hits, (text, _, k, _) in zip(hits_by_row, batch)]

    def _cached_rows(self, batch: list) -> tuple[list[np.ndarray | None], dict[str, list[int]], int]:
        """The rows the cache holds (``None`` elsewhere), the positions of each text it lacks, and the hits."""
        rows: list[np.ndarray | None] = [None] * len(batch)
        missing: dict[str, list[int]] = {}
        hits = 0
        for i, (text, _, _, _) in enumerate(batch):
            if text is None:
                continue
            if text in self.cache:
                self.cache.move_to_end(text)
                rows[i], hits = self.cache[text], hits + 1
            else:
                missing.setdefault(text, []).append(i)
        return rows, missing, hits

    @staticmethod
    def _checked_hits(hits: list, text: str | None) -> list | Exception:
        """The hits, or the error for this query alone when its scores are not finite (JSON cannot carry NaN):
        the sender's fault for a raw embedding (huge values overflow the translator), ours for a text."""
        if all(math.isfinite(getattr(h, "score", 0.0)) for h in hits):
            return hits
        if text is None:
            return QueryError("the embedding gives non-finite scores (are its values far too large?)")
        return RuntimeError("a text query gave non-finite scores")
