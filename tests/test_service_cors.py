"""CORS: off by default (no CORS header at all), on for the origins given (preflights from them pass, others
get no allowance), ``*`` for any origin; origins are checked at start, and the guard's refusals carry the
allowance so a cross-origin page can read them. Over a real uvicorn server."""

from __future__ import annotations

import httpx
import pytest

from service_util import fake_app, running
from stitch.apps.service.cors import check_cors_origins

pytest.importorskip("fastapi")

ALLOWED, OTHER = "https://a.example", "https://b.example"


def preflight(client: httpx.Client, origin: str, method: str = "POST") -> httpx.Response:
    """The OPTIONS a browser sends before a cross-origin JSON POST."""
    headers = {
        "origin": origin,
        "access-control-request-method": method,
        "access-control-request-headers": "content-type",
    }
    return client.options("/search", headers=headers)


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="module")
def default_service(images):
    with running(fake_app(images, delay_s=0.0)) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def one_origin(images):
    app = fake_app(images, delay_s=0.0, cors_origins=[ALLOWED], max_body_bytes=2048)
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def any_origin(images):
    with running(fake_app(images, delay_s=0.0, cors_origins=["*"])) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client


def test_no_cors_header_by_default(default_service):
    search = default_service.get("/search", params={"q": "a dog"}, headers={"origin": ALLOWED})
    assert search.status_code == 200 and cors_headers(search) == {}
    asked = preflight(default_service, ALLOWED)
    assert asked.status_code == 405 and cors_headers(asked) == {}  # no CORS middleware: OPTIONS is not a route


def test_a_listed_origin_passes_the_preflight(one_origin):
    asked = preflight(one_origin, ALLOWED)
    assert asked.status_code == 200
    assert asked.headers["access-control-allow-origin"] == ALLOWED
    assert {"GET", "POST"} <= {m.strip() for m in asked.headers["access-control-allow-methods"].split(",")}
    assert "content-type" in asked.headers["access-control-allow-headers"].lower()
    search = one_origin.post("/search", json={"text": "a dog"}, headers={"origin": ALLOWED})
    assert search.status_code == 200 and search.headers["access-control-allow-origin"] == ALLOWED
    assert "origin" in search.headers["vary"].lower()  # caches must not serve one origin's answer to another


def test_another_origin_gets_no_allowance(one_origin):
    asked = preflight(one_origin, OTHER)
    assert asked.status_code == 400 and "access-control-allow-origin" not in asked.headers
    search = one_origin.get("/search", params={"q": "a dog"}, headers={"origin": OTHER})
    assert search.status_code == 200 and "access-control-allow-origin" not in search.headers  # the browser hides it
    refused = preflight(one_origin, ALLOWED, method="DELETE")
    assert refused.status_code == 400  # only GET and POST are allowed


def test_a_wildcard_allows_any_origin(any_origin):
    for origin in (ALLOWED, OTHER, "http://localhost:3000"):
        asked = preflight(any_origin, origin)
        assert asked.status_code == 200 and asked.headers["access-control-allow-origin"] == "*"
        search = any_origin.get("/search", params={"q": "a cat"}, headers={"origin": origin})
        assert search.status_code == 200 and search.headers["access-control-allow-origin"] == "*"


def test_guard_refusals_carry_the_allowance(one_origin):
    """CORS sits outside the body guard: a cross-origin page can read its 413 instead of a CORS error."""
    big = one_origin.post(
        "/search", content=b"x" * 4096, headers={"origin": ALLOWED, "content-type": "application/json"}
    )
    assert big.status_code == 413 and big.headers["access-control-allow-origin"] == ALLOWED


def test_preflights_are_counted_but_not_timed_as_searches(one_origin):
    before = one_origin.get("/metrics").text
    preflight(one_origin, ALLOWED)
    after = one_origin.get("/metrics").text

    def line(text: str, prefix: str) -> float:
        found = [ln for ln in text.splitlines() if ln.startswith(prefix)]
        return float(found[0].rsplit(" ", 1)[1]) if found else 0.0

    options = 'stitch_http_requests_total{route="/search",method="OPTIONS",code="200"}'
    assert line(after, options) == line(before, options) + 1
    count = "stitch_search_request_duration_seconds_count"
    assert line(after, count) == line(before, count)


@pytest.mark.parametrize(
    "given, expected",
    [
        (None, []),
        ([], []),
        (["*"], ["*"]),
        (["https://A.Example/"], ["https://a.example"]),  # as a browser sends it: lower case, no slash
        (["http://localhost:3000", "http://localhost:3000"], ["http://localhost:3000"]),
    ],
)
def test_origins_are_normalised(given, expected):
    assert check_cors_origins(given) == expected


@pytest.mark.parametrize(
    "given",
    [
        "https://a.example",  # one string, not a list: would allow "h", "t", "p", ...
        ["a.example"],  # no scheme: never matches
        ["https://a.example/app"],  # a path: browsers send none
        ["https://a.example:99999"],
        ["https://user@a.example"],
        ["null"],
        [42],
    ],
)
def test_unusable_origins_are_refused(given, images):
    with pytest.raises(ValueError):
        check_cors_origins(given)
    with pytest.raises(ValueError):
        fake_app(images, cors_origins=given)


def test_the_serve_config_refuses_bad_origins_before_anything_loads(tmp_path):
    from stitch.apps.service.config import ServeConfig

    with pytest.raises(ValueError, match="origin"):
        ServeConfig("no-such-run", "no-such-data.npz", tmp_path, cors_origins=["a.example"])
