"""The folder ``stitch metric --out`` writes, and reading it back.

``metrics.json`` holds the format stamp (``format``, ``version``), the config, the input width and the
scores; ``embedding.safetensors`` the net's weights. ``metrics.json`` is written last, so a folder that has
it is complete; an unknown format or version is refused, not guessed at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stitch.apps.metric_learning.train import EmbeddingConfig, EmbeddingNet, embed
from stitch.data import DataError
from stitch.errors import UsageError
from stitch.io.atomic import atomic_write, atomic_write_text

FORMAT = "stitch-metric-embedding"
VERSION = 1
WEIGHTS = "embedding.safetensors"
SUMMARY = "metrics.json"


@dataclass(frozen=True)
class SavedEmbedding:
    """A trained embedding net read back, with the config it was trained with and its scores."""

    net: EmbeddingNet
    config: EmbeddingConfig
    result: dict
    path: Path

    def embed(self, x: np.ndarray) -> np.ndarray:
        """Unit embeddings of the rows of ``x``."""
        x = np.asarray(x, dtype=np.float32)
        in_dim = self.result["in_dim"]
        if x.ndim != 2 or x.shape[1] != in_dim:
            raise DataError(f"the embedding takes (n, {in_dim}) vectors, got shape {x.shape}")
        return embed(self.net, x)


def write_embedding(folder: Path, net: EmbeddingNet, result: dict) -> None:
    """Weights, then the stamped summary (``result`` must hold ``config`` and ``in_dim``)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {name: value.contiguous() for name, value in net.state_dict().items()}
    atomic_write(folder / WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    body = {"format": FORMAT, "version": VERSION, **result}
    atomic_write_text(folder / SUMMARY, json.dumps(body, indent=2, allow_nan=False))


def load_embedding(folder: str | Path) -> SavedEmbedding:
    """The embedding a ``stitch metric --out`` folder holds (net in eval mode, on the CPU)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    body = _read_summary(folder / SUMMARY)
    try:
        config = EmbeddingConfig.from_dict(body["config"])
    except UsageError as err:
        raise DataError(f"{folder / SUMMARY}: {err}") from err
    net = EmbeddingNet(body["in_dim"], config.hidden, config.dim, config.dropout)
    try:
        net.load_state_dict(load_file(folder / WEIGHTS))
    except (OSError, RuntimeError, ValueError, SafetensorError) as err:  # missing, corrupt, another net's
        raise DataError(f"{folder / WEIGHTS}: not the weights {SUMMARY} describes: {err}") from err
    return SavedEmbedding(net.eval(), config, body, folder)


def _read_summary(path: Path) -> dict:
    if not path.exists():
        raise DataError(f"{path.parent} holds no {SUMMARY}: not a folder `stitch metric --out` wrote")
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not readable JSON: {err}") from err
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} summary (written by an older stitch? train it again)")
    if body.get("version") != VERSION:
        raise DataError(f"{path}: {FORMAT} version {body.get('version')!r}; this stitch reads version {VERSION}")
    in_dim = body.get("in_dim")
    whole = isinstance(in_dim, int) and not isinstance(in_dim, bool)
    if not isinstance(body.get("config"), dict) or not whole or in_dim < 1:
        raise DataError(f"{path}: needs a config mapping and a positive whole in_dim")
    return body
