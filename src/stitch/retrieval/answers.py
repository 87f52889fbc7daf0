"""One query's search results as a user reads them: its label, the hits, and which hits the query file
marks relevant (when it is paired data naming its images), as lines or as one JSON object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Answer:
    """The hits of one query (``label``: its text, row number or ``"embedding"``); ``relevant``: the names of the
    images the query file pairs it with, or None when the file does not say."""

    label: str
    hits: list  # list[stitch.retrieval.search.Hit], best first
    relevant: frozenset[str] | None = None

    def to_json(self) -> dict[str, Any]:
        found: list[dict[str, Any]] = [{"name": h.name, "score": h.score} for h in self.hits]
        for hit in found if self.relevant is not None else []:
            hit["relevant"] = hit["name"] in self.relevant
        return {"query": self.label, "hits": found}

    def lines(self) -> list[str]:
        marked = self.relevant is not None
        out = [f"# {self.label}" + ("  (* relevant, from the query file)" if marked else "")]
        for rank, hit in enumerate(self.hits, 1):
            mark = " *" if marked and hit.name in self.relevant else ""
            out.append(f"{rank:>4}  {hit.score:>9.4f}  {hit.name}{mark}")
        return out
