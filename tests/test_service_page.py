"""The search page and the API docs escape what they insert: a run name is a folder name, and a folder can
be called ``<script>...``."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from service_util import fake_app  # noqa: E402
from stitch.apps.service.page import render_page  # noqa: E402

EVIL = "</title><script>alert(\"run\")</script><b a='x'>"


@pytest.fixture
def client(tmp_path):
    with TestClient(fake_app(tmp_path, title=EVIL)) as client:
        yield client


def test_the_page_escapes_the_run_name(client):
    page = client.get("/")
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "</title><script>" not in page.text
    escaped = "&lt;/title&gt;&lt;script&gt;alert(&quot;run&quot;)&lt;/script&gt;&lt;b a=&#x27;x&#x27;&gt;"
    assert f"<title>{escaped} · stitch search</title>" in page.text
    assert f"run {escaped} · gallery of 20 images" in page.text
    assert page.text.count("<script>") == 1  # the page's own


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_api_docs_escape_the_run_name(client, path):
    """FastAPI writes its title into these pages unescaped; the service hands it an escaped one."""
    docs = client.get(path)
    assert docs.status_code == 200
    assert "<script>alert" not in docs.text and "&lt;script&gt;alert" in docs.text


def test_slots_are_filled_once_not_recursively():
    page = render_page(title="{{GALLERY}} & co", gallery=7)
    assert "<title>{{GALLERY}} &amp; co · stitch search</title>" in page
    assert "gallery of 7 images" in page and "{{TITLE}}" not in page


def test_the_page_says_what_the_scores_on_the_hits_are():
    from types import SimpleNamespace

    from stitch.apps.service.app import scoring_words

    assert scoring_words(SimpleNamespace(rescorer=None)) == "cosine"
    words = scoring_words(SimpleNamespace(rescorer=SimpleNamespace(name="is")))
    assert words == "is (inverted softmax over the bank)"
    page = render_page(title="run", gallery=3, scoring=words)
    assert "scores: is (inverted softmax over the bank)" in page
    assert "scores: cosine" in render_page(title="run", gallery=3)
