"""One request cannot fail its neighbours: 30 concurrent searches over real HTTP, one of them poisoned, against
a fake encoder and searcher that fail the way the real ones do (a TypeError from the tokenizer on a lone
surrogate; a ValueError from the searcher on a non-finite row, failing the whole batch call)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from service_util import fake_app, running

pytest.importorskip("fastapi")

N = 30
POISON = 17


def innocent(i: int) -> dict:
    """Texts and raw embeddings, so both shared calls (encoder, searcher) hold innocents beside the poison."""
    if i % 3 == 2:
        return {"embedding": [((i + j) % 5 - 2) / 3 for j in range(8)], "k": 3}
    return {"text": f"a dog number {i} runs on the beach", "k": 3}


POISONS = {
    # raw JSON, since a client library would refuse to send a lone surrogate; the tokenizer raises TypeError
    "lone surrogate": ('{"text": "\\ud800 evil", "k": 3}', 422),
    # 1e39 passes math.isfinite as a Python float but is Inf once cast to float32
    "float32 overflow": (json.dumps({"embedding": [1e39] + [0.0] * 7, "k": 3}), 422),
    # control characters other than whitespace
    "control character": (json.dumps({"text": "nul\u0000byte", "k": 3}), 422),
    # no check can foresee this one: the encoder crashes on it, a server fault (500) for it alone
    "encoder crash": (json.dumps({"text": "a skull \u2620 on a flag", "k": 3}), 500),
}


async def fire(url: str, poison_body: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=N)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one(i: int) -> httpx.Response:
            if i == POISON:
                headers = {"content-type": "application/json"}
                return await client.post("/search", content=poison_body.encode(), headers=headers)
            return await client.post("/search", json=innocent(i))

        return await asyncio.gather(*(one(i) for i in range(N)))


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    app = fake_app(tmp_path_factory.mktemp("images"), delay_s=0.05)
    with running(app) as url:
        yield url, app.state


@pytest.mark.parametrize("kind", list(POISONS))
def test_one_poisoned_request_among_30_fails_alone(service, kind):
    url, fakes = service
    poison_body, poison_status = POISONS[kind]
    with httpx.Client(base_url=url, timeout=30) as client:  # answers to each innocent query, one at a time
        expected = {i: client.post("/search", json=innocent(i)).json() for i in range(N) if i != POISON}
    fakes.encoder.calls.clear()
    fakes.searcher.calls.clear()

    responses = asyncio.run(fire(url, poison_body))

    statuses = [r.status_code for r in responses]
    assert statuses[POISON] == poison_status, responses[POISON].text
    assert "detail" in responses[POISON].json()
    assert [i for i, s in enumerate(statuses) if s != 200 and i != POISON] == []  # all 29 innocents answered
    for i, response in enumerate(responses):
        if i != POISON:  # each innocent got its own answer, the one it gets alone
            got, alone = response.json()["results"], expected[i]["results"]
            assert [h["name"] for h in got] == [h["name"] for h in alone]
            assert [h["score"] for h in got] == pytest.approx([h["score"] for h in alone], abs=1e-5)
    # the requests really were batched: some shared searcher call served several of them at once
    assert max(fakes.searcher.calls) > 1


def test_bad_text_is_refused_on_get_too(service):
    url, fakes = service
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/search", params={"q": "escape \x1b[31m red"}).status_code == 422
        assert client.get("/search", params={"q": "nul \x00"}).status_code == 422
        # invalid UTF-8 in the URL is decoded with replacement characters: a valid (odd) query
        assert client.get("/search?q=%ED%A0%80%20dog").status_code == 200


JSON = "application/json"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (JSON, b'{"embedding": ["\\ud800"]}'),  # FastAPI's 422 echoes its input: a lone surrogate made it a 500
        (JSON, b'{"text": "a", "k": NaN}'),  # and so did a NaN
        (JSON, b'{"text": "a", "k": 1e999}'),
        ("text/plain", b"\xff\xfe"),  # and bytes that are not UTF-8
        (None, b'{"text": "\xff"}'),
    ],
)
def test_validation_errors_that_echo_poison_are_still_422(service, content_type, body):
    url, _ = service
    headers = {"content-type": content_type} if content_type else {}
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/search", content=body, headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"]
