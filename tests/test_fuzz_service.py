"""Fuzzing the service's query parameters and bodies over real HTTP: whatever a client sends, the answer
is a 2xx or a 4xx with a JSON message — never a 500 — and the service keeps answering."""

from __future__ import annotations

import json
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service_util import fake_app, running

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["", " ", "\x00", "\ud800", "a" * 600, "%", "\u2028", "../../etc/passwd"]
)
K = st.one_of(st.integers(-5, 500), st.sampled_from(["", "x", "1e9", "nan", "-1", "10.5", "true"]))
NUMBER = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**40), 10**40)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with running(fake_app(tmp_path_factory.mktemp("images"), delay_s=0.0)) as url:
        with httpx.Client(base_url=url, timeout=10) as client:
            yield client


def _well_answered(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert "detail" in response.json()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=TEXT, k=K)
def test_get_search_never_answers_500(service, q, k):
    params = {"q": q.encode("utf-8", "surrogatepass").decode("utf-8", "replace"), "k": str(k)}
    _well_answered(service.get("/search", params=params))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.fixed_dictionaries({"text": TEXT}, optional={"k": K}),
        st.fixed_dictionaries({"embedding": st.lists(NUMBER, max_size=12)}, optional={"k": K}),
        st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8) | st.none(), max_size=3),
        st.lists(st.integers(), max_size=3),
    )
)
def test_post_search_never_answers_500(service, body):
    raw = json.dumps(body, allow_nan=True, ensure_ascii=True).encode()
    _well_answered(service.post("/search", content=raw, headers={"content-type": "application/json"}))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=TEXT)
def test_image_names_never_escape_or_fail(service, name):
    quoted = quote(name.encode("utf-8", "surrogatepass").decode("utf-8", "replace"), safe="")
    response = service.get(f"/images/{quoted}")
    assert response.status_code in (200, 404, 405, 307), response.status_code
    assert service.get("/health").status_code == 200
