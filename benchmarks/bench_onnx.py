"""The ONNX Runtime text path against the PyTorch one: agreement on 5,000 Flickr8k captions and speed.

Encodes the first 5,000 distinct dev caption texts with both paths (``minilm`` and ``onnx:minilm``),
reports the cosine of every pair (min / mean) and the largest absolute difference, then times batches of
1, 20 and 64 captions on both (median of repeated calls, interleaved so drift hits both) and prints the
ONNX speed-up as a ratio measured in this run. Usage: python benchmarks/bench_onnx.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k" / "flickr8k.npz"


def timed(encode, texts: list[str]) -> float:
    start = time.perf_counter()
    encode(texts)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    if not DATA.exists():
        sys.exit(f"{DATA} is absent: the shared data must sit beside the repo as ../shared")
    from stitch.encoders.text import text_encoder

    npz = np.load(DATA, allow_pickle=False)
    dev = npz["images/split"][npz["captions/image_index"]] == "dev"
    texts = list(dict.fromkeys(str(t) for t in npz["captions/text"][dev]))
    texts += [str(t) for t in npz["captions/text"][~dev]][: max(0, 5000 - len(texts))]
    texts = texts[:5000]
    torch_path, onnx_path = text_encoder("minilm"), text_encoder("onnx:minilm")
    a, b = torch_path.encode(texts), onnx_path.encode(texts)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    print(f"{len(texts)} Flickr8k captions: cosine min {cosine.min():.7f} mean {cosine.mean():.7f}; "
          f"max abs diff {np.abs(a - b).max():.2e} (target: cosine >= 0.9999)")  # fmt: skip
    rng = np.random.default_rng(0)
    for size, repeats in ((1, 60), (20, 30), (64, 12)):
        times = {"pytorch": [], "onnx": []}
        for _ in range(repeats):
            batch = [texts[i] for i in rng.choice(len(texts), size, replace=False)]
            times["pytorch"].append(timed(torch_path.encode, batch))
            times["onnx"].append(timed(onnx_path.encode, batch))
        med = {name: statistics.median(values) for name, values in times.items()}
        print(f"batch {size:>3}: pytorch {med['pytorch']:7.1f} ms  onnx {med['onnx']:7.1f} ms  "
              f"speed-up {med['pytorch'] / med['onnx']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
