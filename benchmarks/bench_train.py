"""Training throughput: stitch's in-memory batch loop against a plain DataLoader(TensorDataset) loop.

Both loops train the same model with the same loss, optimiser and batch size on the same seeded
synthetic data (Flickr8k-like sizes: 384-d captions, 1024-d images, 5 captions per image); only
how batches are produced differs. Reported as samples/s and their ratio, for the default residual
MLP and for a linear translator (where batch assembly is a larger share of the step).

Usage: python benchmarks/bench_train.py [--captions 30000 --batch 1024 --epochs 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from stitch.data import PairedEmbeddings
from stitch.losses import InfoNCELoss
from stitch.training.batching import CaptionBatches
from stitch.training.config import ModelConfig
from stitch.translators import build_model


def make(n_captions: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n_captions // 5, 1024)).astype(np.float32)
    owner = np.repeat(np.arange(n_captions // 5), 5)
    captions = rng.standard_normal((len(owner), 384)).astype(np.float32)
    return captions, owner, images


def setup(kind: str):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=kind, hidden=2048), 384, 1024).translator
    if kind == "ridge":  # a trainable linear map
        model = torch.nn.Linear(384, 1024)
    loss = InfoNCELoss()
    opt = torch.optim.AdamW(list(model.parameters()) + list(loss.parameters()), lr=1e-4)
    return model, loss, opt


def step(model, loss_fn, opt, x, labels, ref, ref_labels):
    loss = loss_fn(model(x), labels, None, ref, ref_labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def stitch_loop(kind, captions, owner, images, batch, epochs) -> float:
    model, loss_fn, opt = setup(kind)
    batches = CaptionBatches(PairedEmbeddings(captions, images, owner).shards(), batch)
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        for x, labels, ref, ref_labels in batches.epoch():
            step(model, loss_fn, opt, x, labels, ref, ref_labels)
            seen += len(x)
    return seen / (time.perf_counter() - start)


def dataloader_loop(kind, captions, owner, images, batch, epochs) -> float:
    model, loss_fn, opt = setup(kind)
    gallery = torch.as_tensor(images)
    dataset = TensorDataset(torch.as_tensor(captions), torch.as_tensor(owner))
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True)
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        for x, labels in loader:
            ref_labels = torch.unique(labels)
            step(model, loss_fn, opt, x, labels, gallery[ref_labels], ref_labels)
            seen += len(x)
    return seen / (time.perf_counter() - start)


def batches_only(captions, owner, images, batch, epochs) -> tuple[float, float]:
    """Samples/s of producing the batches alone (no model): DataLoader vs stitch."""
    gallery = torch.as_tensor(images)
    loader = DataLoader(
        TensorDataset(torch.as_tensor(captions), torch.as_tensor(owner)), batch_size=batch, shuffle=True, drop_last=True
    )
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        for x, labels in loader:
            ref_labels = torch.unique(labels)
            gallery[ref_labels]
            seen += len(x)
    base = seen / (time.perf_counter() - start)
    batches = CaptionBatches(PairedEmbeddings(captions, images, owner).shards(), batch)
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        for x, *_ in batches.epoch():
            seen += len(x)
    return base, seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=30_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    data = make(args.captions)
    print(
        f"{args.captions:,} synthetic captions, batch {args.batch}, {args.epochs} epochs, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'model':<22} {'DataLoader samples/s':>21} {'stitch samples/s':>17} {'ratio':>6}")
    for kind, label in (("resmlp", "residual MLP (default)"), ("ridge", "linear")):
        base = dataloader_loop(kind, *data, args.batch, args.epochs)
        ours = stitch_loop(kind, *data, args.batch, args.epochs)
        print(f"{label:<22} {base:>21.0f} {ours:>17.0f} {ours / base:>6.2f}")
    base, ours = batches_only(*data, args.batch, 5 * args.epochs)
    print(f"{'batches only (no model)':<22} {base:>21.0f} {ours:>17.0f} {ours / base:>6.2f}")
    print("target: ratio >= 1.5")


if __name__ == "__main__":
    main()
