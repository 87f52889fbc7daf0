"""Data-parallel training on torchrun (2 gloo processes on CPU) gives the weights of one process with the same
global batch, data order and seed: InfoNCE with gathered negatives, SigLIP and the memory queue."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import write_flickr_like
from stitch.data import make_synthetic

COMMON = [
    "model.name=mlp",
    "model.hidden=48",
    "model.dropout=0",  # dropout masks come from per-process random streams
    "optim.epochs=2",
    "optim.batch_size=64",
    "optim.warmup_fraction=0.2",
    "patience=10",
    "inference.bank_size=64",
    "device=cpu",
]
LOSSES = {
    "infonce gathered": ["loss.name=infonce", "loss.queue_size=0"],
    "siglip": ["loss.name=siglip", "loss.queue_size=0"],
    "infonce + memory queue": ["loss.name=infonce", "loss.queue_size=256"],
}
TOLERANCE = 2e-5  # float32 sums in another order (gathered rows, averaged gradients) after 2 epochs of AdamW


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    shape = {"n_images": 300, "captions_per_image": 2, "text_dim": 16, "image_dim": 24, "latent_dim": 6}
    return write_flickr_like(tmp_path_factory.mktemp("ddp") / "d.npz", make_synthetic(**shape))


def train(data, out, overrides, processes: int) -> None:
    stitch = ["-m", "stitch", "train", "--data", str(data), "--out", str(out), "--quiet", *COMMON, *overrides]
    if processes == 1:
        command = [sys.executable, *stitch]
    else:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command = [sys.executable, *launcher, *stitch]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("loss", list(LOSSES))
def test_two_gloo_processes_train_the_weights_of_one(data_file, tmp_path, loss):
    train(data_file, tmp_path / "one", LOSSES[loss], 1)
    train(data_file, tmp_path / "two", LOSSES[loss], 2)
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert one.keys() == two.keys()
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    print(f"\n{loss}: max abs weight difference, 2 processes vs 1: {diff:.2e}")
    assert diff < TOLERANCE
    rows = [np.genfromtxt(tmp_path / run / "metrics.csv", delimiter=",", names=True) for run in ("one", "two")]
    assert np.allclose(rows[0]["train_loss"], rows[1]["train_loss"], atol=1e-5)
    assert rows[0]["train_loss"][1] < rows[0]["train_loss"][0]  # it trained: the comparison is not vacuous
    assert np.allclose(rows[0]["dev_mrr"], rows[1]["dev_mrr"], atol=1e-4)
    assert not list((tmp_path / "two").glob("*.tmp"))  # only rank 0 wrote, and completely


def test_a_global_batch_that_does_not_split_evenly_is_refused(data_file, tmp_path):
    stitch = ["-m", "stitch", "train", "--data", str(data_file), "--out", str(tmp_path / "odd"), *COMMON]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run([*launcher, *stitch, "optim.batch_size=63"], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "a global batch of 63 does not split evenly over 2 ranks" in done.stderr


def test_the_world_of_one_is_the_plain_loop():
    from stitch.training.distributed import Distributed

    world = Distributed()
    rows = torch.arange(10)
    assert not world.active and world.is_main and torch.equal(world.local_rows(rows), rows)
    assert world.gather(rows) is rows
    halves = [Distributed(rank, 2).local_rows(rows).tolist() for rank in (0, 1)]
    assert halves == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


EVAL_SCRIPT = """
import json, sys
import numpy as np, torch
from stitch import api
from stitch.data import make_synthetic
from stitch.training.distributed import Distributed
from stitch.training.trainer import DevEvaluator

shape = {"n_images": 300, "captions_per_image": 2, "text_dim": 16, "image_dim": 24, "latent_dim": 6}
data = make_synthetic(**shape, shared_fraction=float(sys.argv[2]))
result = api.train(data, None, overrides=["model.name=ridge", "inference.bank_size=64"], progress=False)
dev = data.split("dev")
world = Distributed.from_env(torch.device("cpu"))
metrics = DevEvaluator(dev, result.run.config, result.run.bank, torch.device("cpu"), world)(result.model, 0.05)
if world.is_main:
    json.dump(metrics, open(sys.argv[1], "w"))
"""


@pytest.mark.parametrize("shared", [0.0, 0.3])
def test_distributed_dev_evaluation_equals_one_process(tmp_path, shared):
    """Each rank ranks its share of the dev captions (one or several relevant images each); the gathered
    ranks give exactly the metrics of one process."""
    script = tmp_path / "evaluate.py"
    script.write_text(EVAL_SCRIPT)
    outputs = {}
    for processes in (1, 2):
        out = tmp_path / f"metrics{processes}.json"
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        done = subprocess.run([*launcher, str(script), str(out), str(shared)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[processes] = json.loads(out.read_text())
    assert outputs[1] == outputs[2]  # exactly: integer ranks, the same metric code
    assert outputs[1]["mrr"] > 0.1 and "dev_mrr_is" in outputs[1]  # plain and rescored both compared


def test_a_killed_distributed_run_resumes_to_the_weights_of_an_uninterrupted_one(data_file, tmp_path):
    """torchrun training killed (SIGKILL to the whole job) after an epoch's checkpoint, then `--resume`d on 2
    processes, ends where the uninterrupted 2-process run ends."""
    import os
    import signal
    import time

    overrides = [*LOSSES["infonce + memory queue"], "optim.epochs=4"]
    train(data_file, tmp_path / "whole", overrides, 2)
    stitch = ["-m", "stitch", "train", "--data", str(data_file), "--out", str(tmp_path / "cut"), "--quiet"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    job = subprocess.Popen([*launcher, *stitch, *COMMON, *overrides], start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    metrics, deadline = tmp_path / "cut" / "metrics.csv", time.time() + 300
    while not metrics.exists() or len(metrics.read_text().splitlines()) < 3:  # header + 2 epochs
        assert time.time() < deadline and job.poll() is None, "the job ended before it could be killed"
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert not (tmp_path / "cut" / "summary.json").exists()  # killed before it finished
    resume = [*launcher, *stitch[:-1], "--resume", "--quiet"]
    done = subprocess.run(resume, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    whole, cut = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert max(float((whole[k] - cut[k]).abs().max()) for k in whole) < TOLERANCE
    epochs = np.genfromtxt(tmp_path / "cut" / "metrics.csv", delimiter=",", names=True)["epoch"]
    assert epochs.tolist() == [0, 1, 2, 3]  # each epoch once, none lost or repeated


def test_stitch_train_nproc_streams_shards_on_disk_to_the_weights_of_one_process(data_file, tmp_path):
    """`stitch train --nproc 2` (torchrun underneath) on a multi-shard folder, with epochs of a fixed number of
    samples crossing pass boundaries: every rank reads its share of each batch from disk, and the weights
    equal one process reading the same folder; the final table is printed once."""
    from stitch import api

    folder = api.convert(data_file, tmp_path / "shards", shard_rows=100, dtype="float32")
    overrides = [*LOSSES["infonce + memory queue"], "optim.samples_per_epoch=448", "optim.epochs=3"]
    train(folder, tmp_path / "one", overrides, 1)
    stitch = ["-m", "stitch", "train", "--nproc", "2", "--data", str(folder), "--out", str(tmp_path / "two")]
    done = subprocess.run([sys.executable, *stitch, "--quiet", *COMMON, *overrides], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("text->image") == 1  # one rank reports
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < TOLERANCE
    assert len(json.loads((folder / "stitch-shards.json").read_text())["shards"]) == 6


DYING_RANK = """
import os, sys
from stitch.apps import cli
from stitch.training import trainer

real = trainer.Trainer.train_epoch


def train_epoch(self, epoch, state):
    if epoch == 1 and os.environ["RANK"] == "1":
        os._exit(3)  # rank 1 dies mid-job, without a word to its peer
    return real(self, epoch, state)


trainer.Trainer.train_epoch = train_epoch
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_rank_that_dies_fails_the_job_instead_of_hanging(data_file, tmp_path):
    import time

    script = tmp_path / "dying.py"
    script.write_text(DYING_RANK)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    stitch = ["train", "--data", str(data_file), "--out", str(tmp_path / "run"), "--quiet", *COMMON, "optim.epochs=4"]
    started = time.time()
    done = subprocess.run([*launcher, *stitch], capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    assert time.time() - started < 120  # torchrun stops the surviving rank; nothing waits for the 10-minute timeout
    assert "exitcode  : 3" in done.stderr or "exit code 3" in done.stderr.lower(), done.stderr[-2000:]
