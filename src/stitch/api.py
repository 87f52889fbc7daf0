"""The Python API the CLI is a thin layer on: load, split, train, evaluate, predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stitch.data import PairedEmbeddings, Queries, load_pairs, load_queries, read_npy_triplet
from stitch.outputs import submission
from stitch.retrieval.evaluate import DirectionReport, evaluate_embeddings
from stitch.retrieval.hubness import Rescorer, configured_rescorer
from stitch.training import TrainConfig, TrainResult, load_config, load_model, read_info
from stitch.training import train as _train
from stitch.training.config import InferenceConfig
from stitch.training.device import resolve_device
from stitch.training.run import load_bank
from stitch.translators import StitchModel, embed_rows


def load(
    path: str | Path | None = None,
    captions: str | Path | None = None,
    images: str | Path | None = None,
    index: str | Path | None = None,
    **kwargs,
) -> PairedEmbeddings:
    """A paired dataset from one file (npz/pt, layout detected) or three ``.npy`` files."""
    if path is not None:
        return load_pairs(path, **kwargs)
    if captions is None or images is None or index is None:
        raise ValueError("give a data file, or all three of captions, images and index .npy files")
    return read_npy_triplet(captions, images, index, **kwargs)


def train(
    data: PairedEmbeddings,
    config: TrainConfig | str | Path | None = None,
    out: str | Path | None = None,
    overrides: list[str] | dict | None = None,
    **kwargs,
) -> TrainResult:
    """Train a translator; ``config`` is a TrainConfig, a YAML path, or None for the default recipe."""
    if not isinstance(config, TrainConfig):
        config = load_config(config, overrides)
    return _train(data, config, run_dir=out, **kwargs)


def _model(run: str | Path | torch.nn.Module | TrainResult, device: torch.device) -> torch.nn.Module:
    if isinstance(run, TrainResult):
        return run.model.to(device).eval()
    if isinstance(run, torch.nn.Module):
        return run.to(device).eval()
    return load_model(run, device)[0]


def _apply(fn, rows: np.ndarray, device: torch.device) -> np.ndarray:
    return embed_rows(fn, rows, device).cpu().numpy()


def _check_dims(model: StitchModel, text_dim: int, image_dim: int | None = None) -> None:
    if text_dim != model.text_dim:
        raise ValueError(f"the run translates {model.text_dim}-d captions, but the data has {text_dim}-d captions")
    if image_dim is not None and image_dim != model.image_dim:
        raise ValueError(f"the run predicts {model.image_dim}-d images, but the data has {image_dim}-d images")


def evaluate(
    run: str | Path | StitchModel | TrainResult,
    data: PairedEmbeddings,
    split: str | None = None,
    protocol: str = "full",
    device: str = "auto",
    chunk: int = 1024,
    seed: int = 0,
    rerank: str | None = None,
    rerank_params: dict | None = None,
    bank: np.ndarray | None = None,
) -> list[DirectionReport]:
    """Retrieval metrics of a run on ``data`` (or its split ``split``), gallery = its images.

    Text->image scores use the run's hubness-aware scoring (its ``inference`` config, with the
    training captions it kept as query bank) unless ``rerank`` names another method or ``"none"``.
    ``bank`` (raw caption embeddings) replaces the run's bank; it must not hold the evaluated queries.
    """
    dev = resolve_device(device)
    model = _model(run, dev)
    if split is not None:
        data = data.split(split)
    _check_dims(model, data.text_dim, data.image_dim)
    queries = _apply(model.embed_queries, data.captions, dev)
    gallery = _apply(model.embed_gallery, data.images, dev)
    rescorer, query_bank = scoring_setup(run, model, rerank, rerank_params, bank, dev)
    return evaluate_embeddings(
        queries,
        gallery,
        data.caption_image,
        protocol=protocol,
        chunk=chunk,
        seed=seed,
        device=dev,
        rescorer=rescorer,
        query_bank=query_bank,
    )


def run_inference_defaults(run) -> tuple[InferenceConfig | None, np.ndarray | None, float | None]:
    """The run's inference config, kept query bank (raw captions) and learnt temperature, where known."""
    if isinstance(run, TrainResult):
        cfg = run.config.inference if run.config is not None else None
        if cfg is None and run.run_dir is not None:
            cfg = read_info(run.run_dir).config.inference
        return cfg or InferenceConfig(), run.bank, run.temperature
    if isinstance(run, (str, Path)):
        bank, temperature = load_bank(run)
        return read_info(run).config.inference, bank, temperature
    return None, None, None


def scoring_setup(run, model, rerank, rerank_params, bank, device) -> tuple[Rescorer | None, np.ndarray | None]:
    """Resolve which rescorer to use and translate its query bank."""
    cfg, run_bank, temperature = run_inference_defaults(run)
    name = rerank if rerank is not None else (cfg.rerank if cfg else "none")
    if name in (None, "none"):
        return None, None
    captions = bank if bank is not None else run_bank
    if captions is None:
        raise ValueError(
            f"rerank {name!r} needs a query bank of training captions: this run has none; "
            "pass bank= or use rerank='none'"
        )
    rescorer = configured_rescorer(name, rerank_params, cfg, temperature)
    return rescorer, _apply(model.embed_queries, np.asarray(captions, np.float32), device)


def predict(
    run: str | Path | StitchModel | TrainResult, queries: Queries | np.ndarray, device: str = "auto"
) -> np.ndarray:
    """Predicted image features (raw image space) for each query row."""
    dev = resolve_device(device)
    model = _model(run, dev)
    rows = queries.embeddings if isinstance(queries, Queries) else Queries(np.asarray(queries)).embeddings
    _check_dims(model, rows.shape[1])
    if not hasattr(model, "to_image_space"):
        raise ValueError(
            "this run scores in a learnt shared space (dual heads): it has no image-space predictions "
            "for a submission; use a translator recipe (ridge, mlp, resmlp, set)"
        )
    return _apply(model.to_image_space, rows, dev)


def write_submission(
    run: str | Path | StitchModel | TrainResult,
    queries_path: str | Path,
    out: str | Path,
    fmt: str | None = None,
    force: bool = False,
) -> Path:
    """Translate a queries file and write the submission in the competition's layout."""
    fmt = submission.format_for(out, fmt)
    submission.ensure_writable(out, force)  # fail before any work if the output exists
    queries = load_queries(queries_path)
    predictions = predict(run, queries)
    writer = submission.write_csv if fmt == "csv" else submission.write_pt
    return writer(out, queries, predictions, force=force)


def gallery_index(
    run: str | Path | StitchModel | TrainResult,
    data: PairedEmbeddings,
    split: str | None = None,
    kind: str = "exact",
    params: dict | None = None,
    rerank: str | None = None,
    rerank_params: dict | None = None,
    device: str = "auto",
):
    """An index over the images of ``data`` (or its split) in the run's scoring space, with the run's
    rescorer (or ``rerank``) fitted on its query bank. Returns ``(model, index, rescorer)``."""
    from stitch.retrieval.search import build_gallery_index

    dev = resolve_device(device)
    model = _model(run, dev)
    gallery_data = data.split(split) if split else data
    _check_dims(model, gallery_data.text_dim, gallery_data.image_dim)
    rescorer, query_bank = scoring_setup(run, model, rerank, rerank_params, None, dev)
    gallery = _apply(model.embed_gallery, gallery_data.images, dev)
    names = gallery_data.image_names if gallery_data.image_names is not None else None
    index, rescorer = build_gallery_index(gallery, names, kind, params, rescorer, query_bank)
    return model, index, rescorer


def build_index(
    run: str | Path | StitchModel | TrainResult,
    data: PairedEmbeddings,
    out: str | Path,
    split: str | None = None,
    kind: str = "exact",
    params: dict | None = None,
    rerank: str | None = None,
    rerank_params: dict | None = None,
    force: bool = False,
    device: str = "auto",
) -> Path:
    """Index the gallery images of ``data`` (or its split) in the run's scoring space, saved to ``out``."""
    from stitch.retrieval.search import save_rescorer

    _, index, rescorer = gallery_index(run, data, split, kind, params, rerank, rerank_params, device)
    folder = index.save(out, force=force)
    for stale in ("rerank.json", "rerank.safetensors"):
        (folder / stale).unlink(missing_ok=True)
    if rescorer is not None:
        save_rescorer(rescorer, folder)
    return folder


def open_searcher(run, data: PairedEmbeddings, split: str | None = None, index_dir: str | Path | None = None):
    """A :class:`~stitch.retrieval.search.Searcher` over a saved index, or an exact one built now."""
    from stitch.retrieval.search import Searcher

    if index_dir is not None:
        return Searcher.open(run, index_dir)
    model, index, rescorer = gallery_index(run, data, split, device="cpu")
    return Searcher(model, index, rescorer, candidates=len(index))
