"""Ensembles: several runs (seeds or recipes) averaged into one predictor.

Members must score in the same space (same image-side transform and dimension): the ensemble's query
embedding is the mean of the members' L2-normalised translations, which ranks a gallery exactly as the
mean of the members' cosine scores. An ensemble folder holds ``ensemble.json`` (member run folders,
weights) and works wherever a run folder does: evaluate, predict, index, search.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stitch.io.atomic import atomic_write_text

ENSEMBLE = "ensemble.json"


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module], weights: list[float] | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        first = members[0]
        for other in members[1:]:
            if (other.text_dim, other.image_dim) != (first.text_dim, first.image_dim):
                raise ValueError("ensemble members must share text and image dimensions")
            same_space = torch.allclose(other.space.mean, first.space.mean) and torch.allclose(
                other.space.std, first.space.std
            )
            if not same_space or type(other.embed_gallery) is not type(first.embed_gallery):
                raise ValueError("ensemble members must score in the same space (trained on the same data split)")
            if hasattr(other, "image_tower") or hasattr(first, "image_tower"):
                raise ValueError("dual-head runs learn their own gallery space and cannot be averaged")
        self.members = nn.ModuleList(members)
        weights = weights or [1.0] * len(members)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32) / sum(weights))
        self.text_dim, self.image_dim, self.space = first.text_dim, first.image_dim, first.space

    def embed_queries(self, captions: torch.Tensor) -> torch.Tensor:
        parts = [F.normalize(m.embed_queries(captions), dim=-1) for m in self.members]
        if any(p.ndim == 3 for p in parts):  # set heads: use their mean slot direction
            parts = [F.normalize(p.mean(dim=1), dim=-1) if p.ndim == 3 else p for p in parts]
        return sum(w * p for w, p in zip(self.weights, parts))

    def embed_gallery(self, images: torch.Tensor) -> torch.Tensor:
        return self.members[0].embed_gallery(images)

    def to_image_space(self, captions: torch.Tensor) -> torch.Tensor:
        return sum(w * m.to_image_space(captions) for w, m in zip(self.weights, self.members))


def write_ensemble(
    out: str | Path, runs: list[str | Path], weights: list[float] | None = None, force: bool = False
) -> Path:
    """Check the members load together, then write the ensemble folder."""
    from stitch.training.run import load_model

    out = Path(out)
    if (out / ENSEMBLE).exists() and not force:
        raise FileExistsError(f"{out} already holds an ensemble; pass --force to replace it")
    if weights is not None and len(weights) != len(runs):
        raise ValueError(f"{len(weights)} weights for {len(runs)} runs")
    Ensemble([load_model(r)[0] for r in runs], weights)  # validates compatibility
    out.mkdir(parents=True, exist_ok=True)
    body = {"members": [str(Path(r).resolve()) for r in runs], "weights": weights or [1.0] * len(runs)}
    atomic_write_text(out / ENSEMBLE, json.dumps(body, indent=2))
    return out


def read_ensemble(folder: str | Path) -> tuple[list[Path], list[float]]:
    path = Path(folder) / ENSEMBLE
    try:
        body = json.loads(path.read_text())
        return [Path(p) for p in body["members"]], [float(w) for w in body["weights"]]
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{path} is not a valid ensemble file: {err}") from err
