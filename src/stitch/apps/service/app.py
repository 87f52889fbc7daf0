"""The search service: FastAPI over a :class:`~stitch.retrieval.search.Searcher` and a text encoder.

- ``GET /search?q=...&k=...`` and ``POST /search`` (``{"text": ...}`` or ``{"embedding": [...]}``):
  ranked image names and scores;
- ``GET /images/{name}``: a gallery picture, served from the image folder only (names are checked
  against the gallery, so no path can escape the folder);
- ``GET /health``; ``GET /``: a page with a search box and a grid of result thumbnails;
- ``GET /metrics``: Prometheus metrics (:mod:`stitch.apps.service.metrics`).
Input limits answer with 4xx and a message, never a 500; one bad request fails alone, never its batch
(:mod:`stitch.apps.service.batcher`). Bodies are capped and timed (:mod:`stitch.apps.service.guard`), connections
too (:mod:`stitch.apps.service.server`). Every setting arrives in one :class:`~stitch.apps.service.config.ServeConfig`,
checked when it was made, before any model loads.
Browsers on other sites may call it only for the origins given (:mod:`stitch.apps.service.cors`; none by default).
"""

from __future__ import annotations

import gc
import html
import json
import logging
import math
import time
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel, Field

from stitch.apps.service.batcher import MicroBatcher
from stitch.apps.service.config import Limits, ServeConfig
from stitch.apps.service.cors import add_cors
from stitch.apps.service.guard import BodyLimit
from stitch.apps.service.metrics import CONTENT_TYPE, Reading, RequestMetrics, ServiceMetrics
from stitch.apps.service.page import render_page
from stitch.apps.service.server import server_config
from stitch.apps.service.validation import QueryError, check_text
from stitch.data.synthetic import SYNTHETIC_ENCODER
from stitch.errors import ModelOutputError, UsageError
from stitch.io.atomic import safe_member
from stitch.registries import RESCORERS

log = logging.getLogger(__name__)


def json_safe(value: object) -> object:
    """``value`` with what JSON cannot carry made text: non-finite floats (Starlette refuses to write NaN) and
    bytes that are not UTF-8 (``jsonable_encoder`` would raise decoding them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


async def validation_error(request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's 422, written so that the input it echoes cannot break it: its default handler answered 500
    to a lone surrogate (not UTF-8 encodable), a NaN, or a body of non-UTF-8 bytes. ASCII JSON escapes all."""
    detail = jsonable_encoder(json_safe(exc.errors()))
    return Response(json.dumps({"detail": detail}, ensure_ascii=True), 422, media_type="application/json")


class SearchRequest(BaseModel):
    text: str | None = Field(default=None, description="a query sentence (needs the service's text encoder)")
    embedding: list[float] | None = Field(default=None, description="a raw caption embedding")
    k: int = Field(default=10, ge=1, le=100)


class Hit(BaseModel):
    rank: int
    name: str
    score: float
    url: str


class SearchResponse(BaseModel):
    query: str
    k: int
    took_ms: float
    results: list[Hit]


def create_app(searcher, config: ServeConfig, text_encoder=None, title: str | None = None) -> FastAPI:
    """The service app over ``searcher``, with ``config``'s pictures folder, origins, batching and limits; every
    request body passes :class:`BodyLimit` before parsing. ``title``: the name shown (default: the run's).

    Middleware, outermost first: :class:`RequestMetrics` (so it counts every answer, refusals included),
    CORS (only with ``cors_origins``; outside the guard so its 413/408 reach a cross-origin page readable),
    :class:`BodyLimit`."""
    limits, title = config.limits, config.title if title is None else title
    # FastAPI writes the title into the /docs and /redoc HTML unescaped: a run name is not trusted markup
    app = FastAPI(
        title=html.escape(f"{title} search"), version="1", description="Cross-modal search over a stitch run's gallery."
    )
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_middleware(
        BodyLimit, max_body_bytes=limits.body_cap(searcher.text_dim), body_timeout_s=limits.body_timeout_s
    )
    add_cors(app, list(config.cors_origins))
    metrics = ServiceMetrics()
    app.add_middleware(RequestMetrics, metrics=metrics, router=app.router)  # added last: outermost

    batcher = MicroBatcher(searcher, text_encoder, regather_ms=config.regather_ms)
    _search_routes(app, batcher, text_encoder, limits)
    _gallery_routes(app, searcher, batcher, config.images_dir, text_encoder, title)
    _metrics_route(app, metrics, searcher, batcher)
    return app


def _metrics_route(app: FastAPI, metrics: ServiceMetrics, searcher, batcher: MicroBatcher) -> None:
    """``GET /metrics``: the request metrics plus the batcher's and the gallery's, read at scrape time."""
    metrics.add(batcher.batch_sizes)
    readings = [
        (
            "stitch_query_cache_hits_total",
            "Text queries whose embedding came from the query cache",
            "counter",
            lambda: batcher.cache_hits,
        ),
        (
            "stitch_query_cache_misses_total",
            "Text queries the encoder had to embed",
            "counter",
            lambda: batcher.cache_misses,
        ),
        ("stitch_query_cache_entries", "Texts held in the query cache", "gauge", lambda: len(batcher.cache)),
        ("stitch_gallery_images", "Images in the gallery searched", "gauge", lambda: len(searcher.index)),
    ]
    for name, help_text, kind, read in readings:
        metrics.add(Reading(name, help_text, kind, read))

    @app.get("/metrics", include_in_schema=False)
    async def metrics_page() -> Response:  # on the event loop, where the request metrics are written
        return Response(metrics.render(), media_type=CONTENT_TYPE)


def _search_routes(app: FastAPI, batcher: MicroBatcher, text_encoder, limits: Limits) -> None:
    """``GET /search`` and ``POST /search``: every query checked alone before it joins a batch."""

    async def run_search(text: str | None, embedding: list[float] | None, label: str, k: int) -> SearchResponse:
        if not 1 <= k <= limits.max_k:
            raise HTTPException(422, f"k must be between 1 and {limits.max_k}")
        start = time.perf_counter()
        try:
            hits = await batcher.submit(text, embedding, k)
        except (QueryError, ModelOutputError) as err:  # this query's own fault (alone, or isolated from its batch)
            raise HTTPException(422, str(err)) from err
        except Exception as err:  # a server fault, for this query only
            log.exception("search failed for one query")
            raise HTTPException(500, "internal error while searching") from err
        took = (time.perf_counter() - start) * 1000  # text encoding included
        results = [Hit(rank=i + 1, name=h.name, score=h.score, url=f"/images/{h.name}") for i, h in enumerate(hits)]
        return SearchResponse(query=label, k=k, took_ms=round(took, 3), results=results)

    def checked_text(text: str) -> str:
        text = text.strip()
        if not text:
            raise HTTPException(422, "the query is empty")
        if len(text) > limits.max_query_chars:
            raise HTTPException(422, f"the query is longer than {limits.max_query_chars} characters")
        if text_encoder is None:
            raise HTTPException(400, "this service has no text encoder: send a raw embedding to POST /search")
        try:
            return check_text(text)  # before it can join a batch: lone surrogates, control characters
        except QueryError as err:
            raise HTTPException(422, str(err)) from err

    @app.get("/search", response_model=SearchResponse)
    async def search_get(q: str = Query(..., max_length=10_000), k: int = Query(10)) -> SearchResponse:
        return await run_search(checked_text(q), None, q, k)

    @app.post("/search", response_model=SearchResponse)
    async def search_post(body: SearchRequest) -> SearchResponse:
        if (body.text is None) == (body.embedding is None):
            raise HTTPException(422, "send exactly one of 'text' or 'embedding'")
        if body.text is not None:
            return await run_search(checked_text(body.text), None, body.text, body.k)
        # dimension and float32 finiteness are checked by the batcher before the query joins a batch (-> 422)
        return await run_search(None, body.embedding, "embedding", body.k)


def _gallery_routes(app: FastAPI, searcher, batcher: MicroBatcher, images_dir: Path, text_encoder, title: str) -> None:
    """``/health``, the gallery's pictures (names checked against the gallery and the folder) and the page."""
    gallery = {str(n) for n in searcher.index.names}

    @app.get("/health")
    def health() -> dict:
        return {
            "status": "ok",
            "gallery": len(searcher.index),
            "text_dim": searcher.text_dim,
            "text_encoder": None if text_encoder is None else text_encoder.spec,
            "index": searcher.index.kind,
            "rescoring": "none" if searcher.rescorer is None else searcher.rescorer.name,
            "query_cache": {"size": len(batcher.cache), "hits": batcher.cache_hits, "misses": batcher.cache_misses},
        }

    @app.get("/images/{name}")
    def image(name: str) -> FileResponse:
        try:
            path = safe_member(images_dir, name)
        except ValueError:
            path = None
        if name not in gallery or path is None or not path.is_file():
            raise HTTPException(404, "no such image in the gallery")
        return FileResponse(path)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return render_page(title=title, gallery=len(searcher.index), scoring=scoring_words(searcher))


def build_app(config: ServeConfig) -> FastAPI:
    """Load the run, its gallery (an exact index with the run's rescoring, or ``config.index``) and the text
    encoder the run or the data records (or ``config.text_encoder``), and make the app (:func:`create_app`)."""
    from stitch import api
    from stitch.encoders.text import text_encoder as make_text_encoder

    data = api.load(config.data_path)
    opened = api.open(config.run)  # once: the searcher and the recorded encoder come from the same loaded run
    searcher = api.open_searcher(opened, data, config.split, config.index)
    recorded = (opened.info.meta.get("encoders") or {}).get("text")  # the space the run was trained on
    spec = config.text_encoder or recorded or data.encoders.get("text")
    if spec is None and Path(config.data_path).name == "flickr8k.npz":
        spec = "minilm"  # the shared Flickr8k captions are all-MiniLM-L6-v2 embeddings (../shared/README.md)
    if spec == SYNTHETIC_ENCODER:
        spec = None  # synthetic vectors have no text model: the service answers vector queries only
    encoder = make_text_encoder(spec, precision=config.text_precision) if spec else None
    if encoder is not None and encoder.dim != searcher.text_dim:
        raise UsageError(f"text encoder {spec} makes {encoder.dim}-d embeddings, the run expects {searcher.text_dim}")
    return create_app(searcher, config, encoder)


def serve(config: ServeConfig) -> None:
    """Serve ``config.run`` until interrupted, under ``config.limits`` (:class:`Limits`): request bodies over
    ``max_body_bytes`` (default 64 KiB, more for wide embeddings) get 413 and bodies slower than
    ``body_timeout_s`` 408; a request head still incomplete past ``max_header_bytes`` gets 400 and one slower
    than ``header_timeout_s`` is closed; idle kept-alive connections close after ``keep_alive_s``. The config
    was checked when it was made, before any model loads."""
    import uvicorn

    app = build_app(config)
    # The models, tokenizer and gallery are millions of long-lived objects: frozen out of the collector's reach,
    # a full collection under load no longer walks them (one did, stalling a loaded batch ~300 ms on the ONNX
    # path, p99 305 -> 58 ms). This process only serves, so nothing frozen was meant to be freed.
    gc.collect()
    gc.freeze()
    # `stitch -v serve` adds uvicorn's access lines; by default it logs warnings only
    uvicorn_level = "info" if logging.getLogger("stitch").getEffectiveLevel() <= logging.DEBUG else "warning"
    uvicorn_config = server_config(app, config.host, config.port, config.limits, uvicorn_level)
    print(f"serving {config.run} on http://{config.host}:{config.port}/")
    uvicorn.Server(uvicorn_config).run()


def scoring_words(searcher) -> str:
    """What a hit's number is, in the page's words: the searcher's rescoring by its registry line, else cosine."""
    if searcher.rescorer is None:
        return "cosine"
    return f"{searcher.rescorer.name} ({RESCORERS.entry(searcher.rescorer.name).help})"
