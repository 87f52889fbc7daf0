"""Flickr8k with identical caption texts merged: how much the one-answer assumption understates a score.

Writes the merged data in the query/item layout, trains the default recipe on it (split by connected
component of the caption-image graph, so no text and no image straddles train and dev), then scores the
same run on the same dev images twice: every caption with its one image, and the merged queries with all
their images. Usage::

    python benchmarks/flickr_merged.py [--data ../shared/data/flickr8k/flickr8k.npz] [--out runs/merged]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from stitch import api
from stitch.data.dedupe import merge_duplicate_texts
from stitch.data.query_items import write_query_items
from stitch.data.splits import component_split
from stitch.retrieval.evaluate import describe_protocol

KEYS = ("hit@1", "hit@5", "hit@10", "recall@1", "recall@10", "mrr", "ndcg@10", "map@10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/flickr8k/flickr8k.npz")
    parser.add_argument("--out", default="runs/merged")
    args = parser.parse_args()
    out = Path(args.out)
    full = api.load(args.data)
    merged, summary = merge_duplicate_texts(full)
    print(f"merge: {summary.describe()}")
    folder = out / "query_items"
    if not folder.exists():
        write_query_items(dataclasses.replace(merged, image_split=None), folder)
    data = api.load(folder)
    run = out / "run"
    if not (run / "summary.json").exists():
        start = time.perf_counter()
        api.train(data, None, out=run)  # the default recipe
        print(f"trained the default recipe in {time.perf_counter() - start:.0f} s")
    config = api.open(run).config
    parts, how = component_split(data, config.dev_fraction, config.seed)
    print(f"dev: {how}")
    dev_names = set(data.image_names[parts["dev"]].tolist())
    one_answer = full.subset_images(np.array([i for i, n in enumerate(full.image_names) if n in dev_names]))
    many = data.subset_images(parts["dev"])
    for rerank in (None, "none"):
        rows = {
            "one answer per caption": api.evaluate(run, one_answer, rerank=rerank)[0],
            "merged duplicate texts": api.evaluate(run, many, rerank=rerank)[0],
        }
        first = next(iter(rows.values()))
        print(f"\n{describe_protocol(first.protocol, first.gallery, first.gallery_kind)}")
        print(f"{'relevance':<26}{'queries':>8}" + "".join(f"{k:>10}" for k in KEYS))
        for name, report in rows.items():
            values = "".join(f"{report.metrics[k]:>10.4f}" for k in KEYS)
            print(f"{name:<26}{report.queries:>8}{values}")


if __name__ == "__main__":
    main()
