"""Peak memory of ``stitch convert`` when one caption is 2,000,000 characters long.

A clip-retrieval folder of 1,800 caption rows (600 images x 3, 384-d text, 1024-d image embeddings, float32,
synthetic) is converted to the sharded layout twice in fresh processes: once with every caption short
(the baseline, measured in the same run) and once with caption row 7 replaced by 2,000,000 characters.
Peak RSS is the child's ``ru_maxrss``. Stored as fixed-width numpy strings the long column alone would
take rows x 4 bytes x the longest caption; that figure is printed for scale, not run.

    .venv/bin/python benchmarks/bench_text_memory.py [--length 2000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).with_name("results_text_memory.txt")
ROWS, PER_IMAGE = 1800, 3
LIMIT_BYTES = 1 << 30


def write_folder(folder: Path, long_length: int) -> None:
    rng = np.random.default_rng(0)
    n_images = ROWS // PER_IMAGE
    owner = np.repeat(np.arange(n_images), PER_IMAGE)
    for sub in ("img_emb", "text_emb", "metadata"):
        (folder / sub).mkdir(parents=True)
    images = rng.standard_normal((n_images, 1024)).astype(np.float32)
    np.save(folder / "img_emb" / "img_emb_0.npy", images[owner])
    np.save(folder / "text_emb" / "text_emb_0.npy", rng.standard_normal((ROWS, 384)).astype(np.float32))
    captions = [f"a short caption number {i}" for i in range(ROWS)]
    if long_length:
        captions[7] = ("a long caption " * (long_length // 15 + 1))[:long_length]
    meta = {"key": [f"img{i}.jpg" for i in owner], "caption": captions}
    pq.write_table(pa.table(meta), folder / "metadata" / "metadata_0.parquet")


def peak_rss(folder: Path, out: Path) -> tuple[int, int]:
    """(peak RSS in bytes, exit code) of one ``stitch convert`` in a fresh process."""
    command = [sys.executable, "-m", "stitch", "convert", str(folder), str(out), "--image-key", "key", "-q"]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss * 1024, child.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_folder(root / "short", 0)
        write_folder(root / "long", args.length)
        peaks: dict[str, list[int]] = {"short": [], "long": []}
        for repeat in range(args.repeats):
            for name in peaks:  # alternate, so load on the machine falls on both alike
                peak, code = peak_rss(root / name, root / f"out-{name}-{repeat}")
                if code:
                    raise SystemExit(f"convert of the {name} folder failed with exit code {code}")
                peaks[name].append(peak)
        long_texts = sum(p.stat().st_size for p in (root / "out-long-0").iterdir() if "caption_texts" in p.name)
    base, long = np.median(peaks["short"]), np.median(peaks["long"])
    fixed_width = ROWS * 4 * args.length
    lines.append(f"stitch convert, clip-retrieval folder of {ROWS} rows, median of {args.repeats} fresh processes")
    lines.append(f"  all captions short (baseline):        peak RSS {base / 2**20:8.1f} MiB")
    lines.append(f"  one caption of {args.length:,} characters: peak RSS {long / 2**20:8.1f} MiB  ({long / base:.2f}x)")
    lines.append(f"  caption text files written: {long_texts / 2**20:.2f} MiB")
    lines.append(f"  the same column as fixed-width numpy strings would be {fixed_width / 2**30:.1f} GiB")
    verdict = "under" if long < LIMIT_BYTES else "OVER"
    lines.append(f"  target: peak RSS under 1 GiB: {verdict} ({long / 2**30:.3f} GiB)")
    lines.append(f"  machine: {os.cpu_count()} CPUs; peak RSS does not depend on load")
    text = "\n".join(lines)
    print(text)
    OUT.write_text(text + "\n")


if __name__ == "__main__":
    main()
