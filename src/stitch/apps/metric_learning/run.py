"""The ``stitch metric`` workflow: split, train, compare with the raw features, plot, save."""

from __future__ import annotations

from pathlib import Path

from stitch.apps.metric_learning.data import load_labelled, stratified_split
from stitch.apps.metric_learning.evaluate import score_space
from stitch.apps.metric_learning.folder import SUMMARY, write_embedding
from stitch.apps.metric_learning.train import EmbeddingConfig, embed, train_embedding
from stitch.bounds import Bound, check
from stitch.errors import UsageError
from stitch.registries import PROJECTIONS


def _check_run(k: int, test_fraction: float, projection: str) -> None:
    check("k", k, Bound(1, 1_000_000, integer=True), UsageError)
    check("test_fraction", test_fraction, Bound(0.0, 1.0), UsageError)
    if projection != "none":
        PROJECTIONS.check(projection, "projection")


def run_metric_learning(
    data_path: str,
    config: EmbeddingConfig,
    out: str | Path | None = None,
    k: int = 5,
    test_fraction: float = 0.5,
    projection: str = "tsne",
    force: bool = False,
) -> dict:
    """Train on a stratified split of the labelled vectors at ``data_path``, score held-out items against
    the training items in raw and embedded space, and write the folder ``out`` (see ``folder``)."""
    _check_run(k, test_fraction, projection)
    out_dir = Path(out) if out else None
    if out_dir is not None and (out_dir / SUMMARY).exists() and not force:
        raise FileExistsError(f"{out_dir} already holds results; pass --force to replace them")
    data = load_labelled(data_path)
    train, test = stratified_split(data, test_fraction, config.seed)
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
        "in_dim": int(data.x.shape[1]),
        "k": k,
        "raw": raw,
        "embedding": learnt,
        "train": len(train.labels),
        "held_out": len(test.labels),
    }
    if out_dir is not None:
        write_embedding(out_dir, net, result)
        if projection != "none":
            from stitch.outputs.plots import project_2d, scatter_2d

            points = project_2d(embed(net, test.x), projection, config.seed)
            title = f"{projection.upper()} of held-out embeddings ({config.loss}, {config.miner})"
            print(f"plot: {scatter_2d(points, test.labels, out_dir / f'{projection}.png', title)}")
    return result
