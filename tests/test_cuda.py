"""The CUDA path: bf16 autocast training, NCCL data parallelism, and batches streamed from disk onto the GPU.
Marked ``cuda``; every test skips with a reason where no NVIDIA GPU is present (CI has none), and is run on a
GPU machine whenever one is lent (``pytest -m cuda``)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from stitch import api
from stitch.data import make_synthetic
from stitch.data.sharded import ShardedPairs, write_sharded
from stitch.training.batching import CaptionBatches
from stitch.training.device import autocast, resolve_device

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
]
SHAPE = {"n_images": 2000, "captions_per_image": 3, "text_dim": 32, "image_dim": 48, "latent_dim": 8}
OVERRIDES = ["optim.epochs=3", "model.hidden=128", "optim.batch_size=256"]


def test_auto_device_is_the_gpu_and_autocast_is_bf16():
    device = resolve_device("auto")
    assert device.type == "cuda"
    with autocast(device, True):
        out = torch.ones(4, 4, device=device) @ torch.ones(4, 4, device=device)
    assert out.dtype == torch.bfloat16


def test_bf16_training_on_the_gpu_matches_fp32_on_the_cpu():
    data = make_synthetic(**SHAPE)
    gpu = api.train(data, None, overrides=[*OVERRIDES, "device=cuda", "amp=true"], progress=False)
    cpu = api.train(data, None, overrides=[*OVERRIDES, "device=cpu"], progress=False)
    assert next(gpu.model.parameters()).device.type == "cuda"
    # bf16 keeps ~3 significant digits: the same recipe lands within a small margin of the fp32 run
    assert abs(gpu.dev_metrics["mrr"] - cpu.dev_metrics["mrr"]) < 0.02
    assert gpu.dev_metrics["mrr"] > 0.1  # and it learnt: random MRR on 200 dev images is about 0.03


def test_batches_streamed_from_disk_land_on_the_gpu(tmp_path):
    data = make_synthetic(**SHAPE)
    folder = write_sharded(ShardedPairs.of(data), tmp_path / "shards", shard_rows=1000)
    train, _, _ = api.load(folder).holdout(0.1)
    captions, labels, images, ids = next(CaptionBatches(train, 128, device="cuda").epoch())
    assert {t.device.type for t in (captions, labels, images, ids)} == {"cuda"}
    assert captions.dtype == torch.float32 and torch.isfinite(captions).all()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL data parallelism needs two GPUs")
def test_two_gpu_nccl_training_equals_one_gpu(tmp_path):
    data = make_synthetic(**SHAPE)
    path = tmp_path / "data.npz"
    np.savez(path, **{"captions/embeddings": data.captions, "captions/image_index": data.caption_image,
                      "images/embeddings": data.images, "images/split": data.image_split})
    overrides = [*OVERRIDES, "amp=false", "device=cuda"]
    one = api.train(api.load(path), None, out=tmp_path / "one", overrides=overrides, progress=False)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "stitch",
               "train", "--data", str(path), "--out", str(tmp_path / "two"), "--quiet", *overrides]
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    two = api.open(tmp_path / "two", "cpu")
    for (name, a), b in zip(one.model.state_dict().items(), two.model.state_dict().values()):
        assert torch.allclose(a.cpu(), b, atol=1e-4), name
