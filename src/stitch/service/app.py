"""The search service: FastAPI over a :class:`~stitch.retrieval.search.Searcher` and a text encoder.

- ``GET /search?q=...&k=...`` and ``POST /search`` (``{"text": ...}`` or ``{"embedding": [...]}``):
  ranked image names and scores;
- ``GET /images/{name}``: a gallery picture, served from the image folder only (names are checked
  against the gallery, so no path can escape the folder);
- ``GET /health``; ``GET /``: a page with a search box and a grid of result thumbnails.
Input limits answer with 4xx and a message, never a 500.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, Field

from stitch.service.batcher import MicroBatcher
from stitch.service.page import PAGE


@dataclass(frozen=True)
class Limits:
    max_query_chars: int = 500
    max_k: int = 100


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


def create_app(searcher, images_dir: str | Path, text_encoder=None, limits: Limits = Limits(), title: str = "stitch"):
    images_dir = Path(images_dir).resolve()
    gallery = {str(n) for n in searcher.index.names}
    app = FastAPI(title=f"{title} search", version="1", description="Cross-modal search over a stitch run's gallery.")

    batcher = MicroBatcher(searcher, text_encoder)

    async def run_search(text: str | None, embedding: list[float] | None, label: str, k: int) -> SearchResponse:
        if not 1 <= k <= limits.max_k:
            raise HTTPException(422, f"k must be between 1 and {limits.max_k}")
        start = time.perf_counter()
        try:
            hits = await batcher.submit(text, embedding, k)
        except ValueError as err:
            raise HTTPException(422, str(err)) from err
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
        return text

    @app.get("/health")
    def health() -> dict:
        return {
            "status": "ok",
            "gallery": len(searcher.index),
            "text_dim": searcher.text_dim,
            "text_encoder": getattr(text_encoder, "spec", None),
            "index": searcher.index.kind,
            "rescoring": getattr(searcher.rescorer, "name", "none"),
            "query_cache": {"size": len(batcher.cache), "hits": batcher.cache_hits},
        }

    @app.get("/search", response_model=SearchResponse)
    async def search_get(q: str = Query(..., max_length=10_000), k: int = Query(10)) -> SearchResponse:
        return await run_search(checked_text(q), None, q, k)

    @app.post("/search", response_model=SearchResponse)
    async def search_post(body: SearchRequest) -> SearchResponse:
        if (body.text is None) == (body.embedding is None):
            raise HTTPException(422, "send exactly one of 'text' or 'embedding'")
        if body.text is not None:
            return await run_search(checked_text(body.text), None, body.text, body.k)
        if len(body.embedding) != searcher.text_dim:
            raise HTTPException(422, f"embedding must have {searcher.text_dim} dimensions, got {len(body.embedding)}")
        if not all(math.isfinite(v) for v in body.embedding):
            raise HTTPException(422, "embedding contains NaN or Inf")
        return await run_search(None, body.embedding, "embedding", body.k)

    @app.get("/images/{name}")
    def image(name: str) -> FileResponse:
        if name not in gallery or "/" in name or "\\" in name or name.startswith("."):
            raise HTTPException(404, "no such image in the gallery")
        path = (images_dir / name).resolve()
        if path.parent != images_dir or not path.is_file():
            raise HTTPException(404, "no such image in the gallery")
        return FileResponse(path)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.replace("{{TITLE}}", title).replace("{{GALLERY}}", str(len(searcher.index)))

    return app


def build_app(
    run: str | Path,
    data_path: str | Path,
    images_dir: str | Path,
    split: str | None = None,
    index: str | Path | None = None,
    text_encoder: str | None = None,
    text_precision: str = "fp32",
):
    """Load the run, its gallery (an exact index with the run's rescoring, or ``index``) and the text encoder
    the data records (or ``text_encoder``)."""
    from stitch import api
    from stitch.encoders.text import TextEncoder

    data = api.load(data_path)
    searcher = api.open_searcher(run, data, split, index)
    spec = text_encoder or data.encoders.get("text")
    if spec is None and Path(data_path).name == "flickr8k.npz":
        spec = "minilm"  # the shared Flickr8k captions are all-MiniLM-L6-v2 embeddings (../shared/README.md)
    encoder = TextEncoder(spec, precision=text_precision) if spec else None
    if encoder is not None and encoder.dim != searcher.text_dim:
        raise ValueError(f"text encoder {spec} makes {encoder.dim}-d embeddings, the run expects {searcher.text_dim}")
    return create_app(searcher, images_dir, encoder, title=Path(run).name)


def serve(
    run,
    data_path,
    images_dir,
    split=None,
    host: str = "127.0.0.1",
    port: int = 8000,
    index=None,
    text_encoder=None,
    text_precision: str = "fp32",
) -> None:
    import uvicorn

    app = build_app(run, data_path, images_dir, split, index, text_encoder, text_precision)
    print(f"serving {run} on http://{host}:{port}/")
    uvicorn.run(app, host=host, port=port, log_level="warning")
