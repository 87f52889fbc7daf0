"""How a scoring or indexing pass runs, apart from what it scores: settings objects built once and handed to
:func:`stitch.api.evaluate` and :func:`stitch.api.build_index`.

A field with ``metadata={"help": ...}`` is also a command-line option (the CLI is generated from these fields);
the others (a caption bank array, the device) are set from Python only. Kept free of heavy imports so the
command line can read them without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stitch import registries

CHUNK_ROWS = 8192  # rows per chunk when streaming statistics (a few MB of float64 per side)

_RERANK_HELP = "hubness-aware scoring, with the file's train captions as query bank"
_RERANK_PARAM_HELP = "e.g. beta=20 or k=10"


@dataclass(frozen=True)
class EvalOptions:
    """How :func:`~stitch.api.evaluate` scores, apart from what (run, data, split) and under which protocol: the
    device, chunk and seed of the scoring pass; ``rerank`` (another rescorer by name, ``"none"`` for plain cosine)
    with ``rerank_params``; ``bank`` (raw caption embeddings replacing the run's query bank); whether evaluated
    captions may be in that bank (``allow_train_overlap``); whether identical texts merge into one query."""

    device: str = "auto"
    chunk: int = field(default=1024, metadata={"help": "queries scored at once (memory ~ chunk x gallery)"})
    seed: int = field(default=0, metadata={"help": "seed of the kaggle100 candidates"})
    rerank: str | None = field(default=None, metadata={"help": _RERANK_HELP, "choices": registries.RESCORERS.names})
    rerank_params: dict | None = field(default=None, metadata={"help": _RERANK_PARAM_HELP, "flag": "--rerank-param"})
    bank: Any = None  # np.ndarray | None: raw caption embeddings
    allow_train_overlap: bool = field(
        default=False,
        metadata={"help": "score captions that are in the run's query bank (training captions) instead of refusing"},
    )
    merge_duplicate_texts: bool = field(
        default=False,
        metadata={
            "help": "score identical caption texts as one query relevant to all their images (needs caption texts)"
        },
    )


@dataclass(frozen=True)
class IndexOptions:
    """How a gallery is indexed, apart from which images and the index kind: ``rerank`` (another rescorer
    than the run's, with ``rerank_params``) fitted on the gallery, the device, the IVF training sample's
    ``seed``, the images embedded at a time (``chunk``), and whether a saved index may replace one (``force``)."""

    rerank: str | None = field(default=None, metadata={"help": _RERANK_HELP, "choices": registries.RESCORERS.names})
    rerank_params: dict | None = field(default=None, metadata={"help": _RERANK_PARAM_HELP, "flag": "--rerank-param"})
    device: str = "auto"
    seed: int = 0
    chunk: int = CHUNK_ROWS
    force: bool = field(default=False, metadata={"help": "replace an index already in --out"})
