"""The micro-batcher: a lone query goes straight through, concurrent ones share encoder calls, and every
caller gets its own answer (its own query, its own k), errors included."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import numpy as np
import pytest

from stitch.service.batcher import MicroBatcher


class SlowEncoder:
    """Encodes text 'q<i>' as a one-hot row i; takes 20 ms a call, so queries pile up meanwhile."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode(self, texts):
        self.calls.append(len(texts))
        time.sleep(0.02)
        rows = np.zeros((len(texts), 8), dtype=np.float32)
        for j, text in enumerate(texts):
            if text == "boom":
                raise ValueError("cannot encode boom")
            rows[j, int(text[1:])] = 1
        return rows


class EchoSearcher:
    """Hits named after the one-hot position of each row, k of them."""

    def search(self, rows, k):
        return [[SimpleNamespace(name=f"img{int(np.argmax(r))}-{j}") for j in range(k)] for r in rows]


def run(coro):
    return asyncio.run(coro)


def test_a_lone_query_is_not_held_back():
    encoder = SlowEncoder()
    batcher = MicroBatcher(EchoSearcher(), encoder)

    async def main():
        first = await batcher.submit("q3", None, 2)
        await asyncio.sleep(0.01)
        return first, await batcher.submit("q4", None, 1)

    first, second = run(main())
    assert [h.name for h in first] == ["img3-0", "img3-1"] and [h.name for h in second] == ["img4-0"]
    assert encoder.calls == [1, 1]  # no window: each lone query is encoded at once, on its own


def test_concurrent_queries_share_calls_and_get_their_own_answers():
    encoder = SlowEncoder()
    batcher = MicroBatcher(EchoSearcher(), encoder)

    async def main():
        jobs = [batcher.submit(f"q{i % 8}", None, 1 + i % 3) for i in range(24)]
        jobs.append(batcher.submit(None, [0, 0, 0, 0, 0, 1, 0, 0], 4))  # a raw embedding in the same batch
        return await asyncio.gather(*jobs)

    answers = run(main())
    for i, hits in enumerate(answers[:24]):
        assert [h.name for h in hits] == [f"img{i % 8}-{j}" for j in range(1 + i % 3)]
    assert [h.name for h in answers[24]] == [f"img5-{j}" for j in range(4)]
    # 8 distinct texts, each encoded once (repeats share a batch row or come from the cache), in shared calls
    assert sum(encoder.calls) == 8 and max(encoder.calls) > 1


def test_an_error_reaches_its_batch_and_the_worker_survives():
    batcher = MicroBatcher(EchoSearcher(), SlowEncoder())

    async def main():
        with pytest.raises(ValueError, match="boom"):
            await batcher.submit("boom", None, 1)
        return await batcher.submit("q1", None, 1)

    assert [h.name for h in run(main())] == ["img1-0"]


def test_a_batch_window_collects_late_arrivals():
    encoder = SlowEncoder()
    batcher = MicroBatcher(EchoSearcher(), encoder, max_wait_ms=200)

    async def main():
        async def late(i):
            await asyncio.sleep(0.02 * i)
            return await batcher.submit(f"q{i}", None, 1)

        return await asyncio.gather(*(late(i) for i in range(4)))

    answers = run(main())
    assert [hits[0].name for hits in answers] == [f"img{i}-0" for i in range(4)]
    assert encoder.calls == [4]  # all four arrived within the 200 ms window


def test_repeated_queries_skip_the_encoder_and_the_cache_is_lru():
    encoder = SlowEncoder()
    batcher = MicroBatcher(EchoSearcher(), encoder, cache_size=2)

    async def main():
        first = await asyncio.gather(batcher.submit("q1", None, 1), batcher.submit("q1", None, 2))
        again = await batcher.submit("q1", None, 1)  # cached
        await batcher.submit("q2", None, 1)
        await batcher.submit("q3", None, 1)  # evicts q1, the least recently used
        evicted = await batcher.submit("q1", None, 1)
        return first, again, evicted

    first, again, evicted = run(main())
    assert [h.name for h in first[1]] == ["img1-0", "img1-1"] and again[0].name == evicted[0].name == "img1-0"
    assert encoder.calls == [1, 1, 1, 1]  # q1 (twice in one batch: once), q2, q3, q1 again after eviction
    assert batcher.cache_hits == 1 and list(batcher.cache) == ["q3", "q1"]


def test_a_zero_cache_encodes_every_time():
    encoder = SlowEncoder()
    batcher = MicroBatcher(EchoSearcher(), encoder, cache_size=0)

    async def main():
        for _ in range(3):
            await batcher.submit("q2", None, 1)

    run(main())
    assert encoder.calls == [1, 1, 1] and not batcher.cache
