"""The ``stitch metric`` workflow: split, train, compare with raw-feature kNN, plot, save."""

from __future__ import annotations

import json
from pathlib import Path

from stitch.apps.metric_learning.data import load_labelled, stratified_split
from stitch.apps.metric_learning.evaluate import knn_accuracy, knn_position_error, map_at_r, precision_at_1
from stitch.apps.metric_learning.train import EmbeddingConfig, embed, train_embedding
from stitch.io.atomic import atomic_write, atomic_write_text


def score_space(train_x, train, test_x, test, k: int) -> dict[str, float]:
    out = {
        "precision@1": precision_at_1(test_x, test.labels, train_x, train.labels),
        "map@r": map_at_r(test_x, test.labels, train_x, train.labels),
        f"knn{k}_accuracy": knn_accuracy(test_x, test.labels, train_x, train.labels, k),
    }
    if train.targets is not None:
        out[f"knn{k}_position_error"] = knn_position_error(test_x, test.targets, train_x, train.targets, k)
    return out


def run_metric_learning(
    data_path: str,
    config: EmbeddingConfig,
    out: str | Path | None = None,
    k: int = 5,
    test_fraction: float = 0.5,
    projection: str = "tsne",
    force: bool = False,
) -> dict:
    data = load_labelled(data_path)
    train, test = stratified_split(data, test_fraction, config.seed)
    out_dir = Path(out) if out else None
    if out_dir is not None and (out_dir / "metrics.json").exists() and not force:
        raise FileExistsError(f"{out_dir} already holds results; pass --force to replace them")
    print(
        f"{data_path}: {len(train.labels)} train / {len(test.labels)} held-out items (stratified, seed {config.seed})"
    )
    net = train_embedding(train, config)
    raw = score_space(train.x, train, test.x, test, k)
    learnt = score_space(embed(net, train.x), train, embed(net, test.x), test, k)
    print(f"held-out queries vs training references, cosine; {config.loss} loss, {config.miner} miner")
    print(f"  {'metric':<22} {'raw features':>13} {'embedding':>10}")
    for key in raw:
        print(f"  {key:<22} {raw[key]:>13.4f} {learnt[key]:>10.4f}")
    result = {
        "config": config.to_dict(),
        "raw": raw,
        "embedding": learnt,
        "train": len(train.labels),
        "held_out": len(test.labels),
    }
    if out_dir is not None:
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k_: v.contiguous() for k_, v in net.state_dict().items()}
        atomic_write(out_dir / "embedding.safetensors", lambda tmp: save_file(state, str(tmp)))
        atomic_write_text(out_dir / "metrics.json", json.dumps(result, indent=2))
        if projection != "none":
            from stitch.outputs.plots import project_2d, scatter_2d

            points = project_2d(embed(net, test.x), projection, config.seed)
            plot = scatter_2d(
                points,
                test.labels,
                out_dir / f"{projection}.png",
                f"{projection.upper()} of held-out embeddings ({config.loss}, {config.miner})",
            )
            print(f"plot: {plot}")
    return result
