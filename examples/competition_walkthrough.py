# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A competition entry, from the data to the graded CSV
#
# A caption-to-image competition in the AML-2025 layout gives you `train.npz` (caption and image
# embeddings with a caption × image label matrix), `test.clean.npz` (caption embeddings with ids, no
# images) and `sample_submission.csv`. The grader sees only the vector you submit for each caption and
# ranks the **raw** image embeddings by cosine with it. This notebook trains stitch's `submission` recipe
# on a real sample in that layout (cut from Flickr8k), scores it the way the grader will, writes the CSV,
# and checks both the file and the figure by hand.
#
# It runs on a CPU in well under a minute. Runs and files go to `runs/` beside the notebook.

# %%
# ruff: noqa: E402 - the imports follow this install cell
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("stitch") is None:  # install stitch from this checkout; a no-op where it imports
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", ".."], check=True)

# %% [markdown]
# The sample lives in the `shared/formats/aml2025` folder beside the repository (set `STITCH_SHARED` to
# point elsewhere). Without it the notebook stops here with a message.

# %%
import os
from pathlib import Path


class MissingData(RuntimeError):
    def _render_traceback_(self):  # a notebook shows this one line instead of a traceback
        return [f"stopped: {self}"]


def shared_folder() -> Path | None:
    """The shared data folder: $STITCH_SHARED, else a `shared/` beside this folder or one of its parents."""
    if os.environ.get("STITCH_SHARED"):
        return Path(os.environ["STITCH_SHARED"])
    return next((p / "shared" for p in (Path.cwd(), *Path.cwd().parents) if (p / "shared" / "formats").is_dir()), None)


SHARED = shared_folder()
AML = SHARED / "formats" / "aml2025" if SHARED else Path("shared/formats/aml2025")
if not (AML / "train.npz").is_file():
    raise MissingData(f"{AML} is absent: this walkthrough needs the AML-2025 sample (see the README's data section)")
RUNS = Path("runs")
RUNS.mkdir(exist_ok=True)
print("data:", AML)

# %% [markdown]
# ## 1. The data
#
# `stitch.load` detects the layout (here the AML label matrix, read in row chunks) and checks it:
# shapes, dimensions, finite values, every image captioned.

# %%
import csv
import json

import numpy as np
from IPython.display import display

import stitch
from stitch.data import load_queries, train_dev_split

data = stitch.load(AML / "train.npz")
display(data)

# %%
per_image = np.bincount(data.caption_image, minlength=data.n_images)
norms = np.linalg.norm(data.images, axis=1)
print("captions per image:", sorted(set(per_image.tolist())))
print("a caption:", data.caption_texts[0], "->", data.image_names[data.caption_image[0]])
print(f"caption vectors: norm {np.linalg.norm(data.captions, axis=1).mean():.3f} (unit, MiniLM)")
print(f"image vectors: norm {norms.min():.1f}..{norms.max():.1f}, min value {data.images.min():.2f} (raw MobileNet)")

queries = load_queries(AML / "test.clean.npz")
print(f"test queries: {len(queries)} captions, ids {queries.ids[:3].tolist()}..., no images")

# %% [markdown]
# The training file has no dev split, so keep one: a fifth of the **images** (with all their captions,
# so no caption of a held-out picture is seen in training). Every figure below is on these images.

# %%
train, dev, how = train_dev_split(data, dev_fraction=0.2, seed=0)
print(how)
print("train:", train)
print("dev:  ", dev)

# %% [markdown]
# ## 2. Train the `submission` recipe
#
# `submission` scores exactly as the grader does (its query against the unit raw image) and folds a
# hubness correction into the vector it submits, so what you measure is what the leaderboard sees. Five
# epochs keep this quick; drop the override for the recipe's own schedule. The run sets aside some of its
# training images again to stop early on, and keeps its best epoch. On a sample this small the closed-form
# start it trains from is hard to beat; on full-size data the epochs are where the figure comes from
# (`docs/guide/submitting.md` has the Flickr8k numbers).

# %%
result = stitch.train(train, recipe="submission", out=RUNS / "aml-submission", force=True, overrides=["optim.epochs=5"])
display(stitch.open(result))

# %% [markdown]
# ## 3. Score it as the grader will
#
# `as_submitted=True` takes the vectors `stitch.predict` gives (what the CSV will hold) and ranks the raw
# dev images by cosine with them; `protocol="aml2025"` is the competition's evaluation: the whole
# gallery, recall@1/5/10/20 and MRR cut at rank 20, ties counted against you.

# %%
(graded,) = stitch.evaluate(result, dev, protocol="aml2025", as_submitted=True)
GRADED_MRR = graded.metrics["mrr@20"]
display(graded)  # a table under its protocol line

# %% [markdown]
# For this recipe the run's own scoring and the graded one are the same number; for other recipes they
# differ, and only the graded one counts.

# %%
for scoring, report in stitch.api.scorings(result, dev, protocol="aml2025").items():
    print(f"{scoring:<13} R@1 {report.metrics['recall@1']:.4f}  MRR@20 {report.metrics['mrr@20']:.4f}")

# %% [markdown]
# ## 4. Write the submission
#
# One row per test caption: its id and the vector as a bracketed list of floats, in the sample file's
# layout (CRLF rows, floats that read back exactly).

# %%
submission = stitch.write_submission(result, AML / "test.clean.npz", RUNS / "submission.csv", force=True)


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


ours, sample = read_rows(submission), read_rows(AML / "sample_submission.csv")
dims = {len(json.loads(vector)) for _, vector in ours[1:]}
assert ours[0] == sample[0] == ["id", "embedding"], "the header"
assert [qid for qid, _ in ours[1:]] == queries.ids.tolist(), "one row per test caption, in the file's order"
assert [qid for qid, _ in sample[1:]] == [qid for qid, _ in ours[1 : len(sample)]], "the sample's ids come first"
assert dims == {len(json.loads(sample[1][1]))} == {data.image_dim}, "one image-space vector per row"
assert open(submission, "rb").read().count(b"\r\n") == len(ours), "CRLF rows like the sample"
print(f"{submission}: header {ours[0]}, {len(ours) - 1} rows (the sample shows the first {len(sample) - 1}), "
      f"{dims.pop()} floats a row")
print(ours[1][0], ours[1][1][:70] + "...")

# %% [markdown]
# ## 5. Grade a CSV yourself
#
# The test captions have no images here, so grade the same way a file you *can* score: the dev captions
# written as a queries file in the test layout, submitted through the same writer, read back from the
# CSV and ranked by hand. Unit submitted vector against unit raw image, ties against you, MRR cut at 20.

# %%
dev_ids = np.array([f"dev{i}" for i in range(dev.n_captions)])
np.savez(RUNS / "dev_queries.npz", **{"captions/ids": dev_ids, "captions/embeddings": dev.captions})
dev_csv = stitch.write_submission(result, RUNS / "dev_queries.npz", RUNS / "dev_submission.csv", force=True)

rows = read_rows(dev_csv)[1:]
assert [qid for qid, _ in rows] == dev_ids.tolist()
submitted = np.array([json.loads(vector) for _, vector in rows])


def unit(matrix):
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


cosine = unit(submitted) @ unit(dev.images.astype(np.float64)).T
true = cosine[np.arange(len(cosine)), dev.caption_image]
rank = (cosine >= true[:, None]).sum(axis=1)  # the true image and every image scored at least as high
rescored_mrr = float(np.where(rank <= 20, 1.0 / rank, 0.0).mean())
print(f"recall@1: stitch {graded.metrics['recall@1']:.4f}, by hand {(rank == 1).mean():.4f}")
print(f"graded MRR@20 from stitch.evaluate: {GRADED_MRR!r}")
print(f"re-scored MRR@20 from the CSV:      {rescored_mrr!r}")
assert abs(rescored_mrr - GRADED_MRR) < 1e-6
print("the CSV grades to the figure stitch printed")

# %% [markdown]
# The same from a shell, with the whole sample as training data (the run keeps its own dev images and
# `--split dev` scores them again):
#
# ```bash
# stitch train --data train.npz --recipe submission --out runs/submission
# stitch evaluate --run runs/submission --data train.npz --split dev --as-submitted --protocol aml2025
# stitch predict --run runs/submission --queries test.clean.npz --out submission.csv
# ```
