"""The micro-batcher: a lone query goes straight through, concurrent ones share encoder calls, and every
caller gets its own answer (its own query, its own k), errors included: a query that breaks a shared call
fails alone, and a query that can be refused on its own never joins a batch."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import numpy as np
import pytest

from stitch.apps.service.batcher import MicroBatcher
from stitch.apps.service.validation import QueryError


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
    """Hits named after the one-hot position of each row, k of them; refuses a batch with a non-finite row
    (as the real Searcher does)."""

    text_dim = 8

    def __init__(self) -> None:
        self.calls: list[int] = []

    def search(self, rows, k):
        self.calls.append(len(rows))
        if not np.isfinite(rows).all():
            raise ValueError("query embeddings contain NaN/Inf")
        return [[SimpleNamespace(name=f"img{int(np.argmax(r))}-{j}", score=1.0) for j in range(k)] for r in rows]


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


def test_a_query_that_breaks_the_shared_call_fails_alone():
    """'boom' makes the encoder raise for the whole batch; the batch is split until only 'boom' fails."""
    encoder = SlowEncoder()
    batcher = MicroBatcher(EchoSearcher(), encoder)

    async def main():
        jobs = [batcher.submit(f"q{i}", None, 1) for i in range(7)]
        jobs.insert(3, batcher.submit("boom", None, 1))
        return await asyncio.gather(*jobs, return_exceptions=True)

    answers = run(main())
    assert isinstance(answers[3], ValueError) and "boom" in str(answers[3])
    innocent = answers[:3] + answers[4:]
    assert [hits[0].name for hits in innocent] == [f"img{i}-0" for i in range(7)]
    assert max(encoder.calls) == 8  # the eight really were batched together, and that shared call failed
    assert len(encoder.calls) <= 1 + 2 * 3  # bisection: at most two calls per level of a batch of 8


def test_a_server_fault_stays_a_server_fault_and_reaches_only_its_query():
    """An unforeseen encoder crash (TypeError) is not turned into a 'bad input' ValueError, and only the query
    that triggers it sees it."""

    class Crashing(SlowEncoder):
        def encode(self, texts):
            if "q7" in texts:
                raise TypeError("tokenizer crashed")
            return super().encode(texts)

    batcher = MicroBatcher(EchoSearcher(), Crashing())

    async def main():
        return await asyncio.gather(*(batcher.submit(f"q{i}", None, 1) for i in range(8)), return_exceptions=True)

    answers = run(main())
    assert type(answers[7]) is TypeError
    assert [hits[0].name for hits in answers[:7]] == [f"img{i}-0" for i in range(7)]


@pytest.mark.parametrize(
    ("text", "embedding", "message"),
    [
        ("\ud800 evil", None, "lone surrogate"),
        ("a\x00b", None, "control character"),
        ("bell\x07", None, "control character"),
        (None, [1e39, 0, 0, 0, 0, 0, 0, 0], "float32"),  # a finite Python float, Inf in float32
        (None, [float("nan")] + [0] * 7, "NaN"),
        (None, [0.1] * 7, "8 dimensions"),
        (None, [[0.1] * 8], "flat"),
        (None, ["a"] * 8, "numbers"),
    ],
)
def test_a_bad_query_is_refused_before_it_joins_a_batch(text, embedding, message):
    encoder, searcher = SlowEncoder(), EchoSearcher()
    batcher = MicroBatcher(searcher, encoder)
    with pytest.raises(QueryError, match=message):
        run(batcher.submit(text, embedding, 1))
    assert encoder.calls == [] and searcher.calls == []  # neither shared call ever saw it


def test_whitespace_controls_and_other_scripts_reach_the_encoder():
    seen: list[str] = []

    class Recording:
        def encode(self, texts):
            seen.extend(texts)
            return np.eye(8, dtype=np.float32)[: len(texts)]

    batcher = MicroBatcher(EchoSearcher(), Recording())
    texts = ["tab\there", "two\r\nlines", "façade 犬 🐕", "zero\u200bwidth"]
    for text in texts:
        assert len(run(batcher.submit(text, None, 1))) == 1
    assert seen == texts


def test_non_finite_scores_fail_only_their_query():
    """A raw embedding whose scores overflow gets a QueryError (422); its batch neighbours get their hits."""

    class Overflowing(EchoSearcher):
        def search(self, rows, k):
            hits = super().search(rows, k)
            return [
                [SimpleNamespace(name=h.name, score=float("nan") if r.max() > 1e30 else 1.0) for h in row_hits]
                for r, row_hits in zip(rows, hits)
            ]

    batcher = MicroBatcher(Overflowing(), SlowEncoder())

    async def main():
        huge = [3e38] + [0] * 7  # finite in float32, overflows downstream
        jobs = [batcher.submit(f"q{i}", None, 1) for i in range(4)] + [batcher.submit(None, huge, 1)]
        return await asyncio.gather(*jobs, return_exceptions=True)

    answers = run(main())
    assert isinstance(answers[4], QueryError) and "non-finite" in str(answers[4])
    assert [hits[0].name for hits in answers[:4]] == [f"img{i}-0" for i in range(4)]


def closed_loop(batcher: MicroBatcher, callers: int, rounds: int, leaves_after: dict[int, int] | None = None):
    """``callers`` clients, each sending its next query ``caller`` ms after its previous answer (the time
    an HTTP client takes to read an answer and send again, staggered); caller c stops after
    ``leaves_after[c]`` rounds."""
    leaves_after = leaves_after or {}

    async def caller(c: int) -> None:
        for _ in range(leaves_after.get(c, rounds)):
            hits = await batcher.submit(f"q{c}", None, 1)
            assert hits[0].name == f"img{c}-0"
            batcher.cache.clear()  # every query reaches the encoder, whose calls are the batches
            await asyncio.sleep(0.001 * c)

    async def main():
        await asyncio.wait_for(asyncio.gather(*(caller(c) for c in range(callers))), timeout=20)

    run(main())


def test_steady_callers_share_one_batch_instead_of_alternating_halves():
    """Callers that come back a few ms after their answer: the batcher waits for them, so every round is one
    batch of all of them; without the wait the first to come back goes alone and the rest form another."""
    regathered = SlowEncoder()
    closed_loop(MicroBatcher(EchoSearcher(), regathered, regather_ms=100), callers=8, rounds=5)
    assert regathered.calls == [8, 8, 8, 8, 8]

    continuous = SlowEncoder()
    closed_loop(MicroBatcher(EchoSearcher(), continuous, regather_ms=0), callers=8, rounds=5)
    assert sum(continuous.calls) == 40 and len(continuous.calls) > 5 and min(continuous.calls) < 8


def test_a_lone_caller_never_waits_for_a_crowd():
    """One caller's queries go straight through even with a long regather window (its last batch held one
    query, so nobody else is expected)."""
    encoder = SlowEncoder()
    batcher = MicroBatcher(EchoSearcher(), encoder, regather_ms=5000)
    started = time.perf_counter()
    closed_loop(batcher, callers=1, rounds=5)
    assert encoder.calls == [1] * 5
    assert time.perf_counter() - started < 2.5  # five 20 ms batches; one 5 s wait would fail this


def test_a_caller_that_leaves_costs_one_bounded_wait():
    """When one of 4 callers stops, the next batch waits at most regather_ms for it, then goes with the 3
    that came back; from then on 3 is what the batcher expects, so nothing waits again."""
    encoder = SlowEncoder()
    batcher = MicroBatcher(EchoSearcher(), encoder, regather_ms=300)
    started = time.perf_counter()
    closed_loop(batcher, callers=4, rounds=4, leaves_after={3: 1})
    assert encoder.calls == [4, 3, 3, 3]
    assert time.perf_counter() - started < 0.3 * 3  # one expired window, not one per round


@pytest.mark.parametrize("setting", [{"regather_ms": -1}, {"regather_ms": float("inf")}, {"max_wait_ms": True}])
def test_nonsense_waits_are_refused(setting):
    with pytest.raises(ValueError, match=next(iter(setting))):
        MicroBatcher(EchoSearcher(), SlowEncoder(), **setting)


def test_a_regathered_batch_goes_once_its_callers_are_back():
    """With a batch window too, a batch whose callers have all come back is held only for max_wait, not for
    the whole regather window (five rounds held 2 s each would take 10 s)."""
    encoder = SlowEncoder()
    batcher = MicroBatcher(EchoSearcher(), encoder, max_wait_ms=50, regather_ms=2000)
    started = time.perf_counter()
    closed_loop(batcher, callers=8, rounds=5)
    assert encoder.calls == [8, 8, 8, 8, 8]
    assert time.perf_counter() - started < 5
