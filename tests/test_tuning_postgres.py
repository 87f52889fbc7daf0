"""Tuning shared through PostgreSQL: two `stitch tune` workers on one study in a real server (started here in
a temporary data directory and stopped after), no trial run twice, and a killed worker loses no finished
trial."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import write_flickr_like
from stitch.data import make_synthetic

optuna = pytest.importorskip("optuna", reason="tuning needs optuna (stitch[tune])")
pytest.importorskip("psycopg2", reason="PostgreSQL storage needs psycopg2 (stitch[postgres])")

SPACE = {
    "objective": "mrr",
    "scoring": "none",
    "sampler": "random",
    "pruner": "none",
    "base": ["optim.epochs=2", "model.hidden=32", "optim.batch_size=64", "inference.bank_size=64"],
    "params": {"optim.lr": {"type": "float", "low": 1.0e-3, "high": 3.0e-3, "log": True}},
}


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its tools as the postgres user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres_url():
    initdb, pg_ctl = _server_tool("initdb"), _server_tool("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are absent: apt-get install postgresql")
    if os.geteuid() == 0 and (not shutil.which("runuser") or not _user_exists("postgres")):
        pytest.skip("running as root without a postgres user to run the server as")
    root = Path(tempfile.mkdtemp(prefix="stitch-pg-"))  # pytest's own folders are private to this user
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for folder in (root, sockets):
            os.chown(folder, user.pw_uid, user.pw_gid)
    port = _free_port()
    subprocess.run(_as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "postgres"]), check=True,
                   capture_output=True)  # fmt: skip
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1"
    start = [pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "start"]
    subprocess.run(_as_postgres(start), check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _server_tool(name: str) -> str | None:
    """On PATH, or where Debian's postgresql package keeps it (/usr/lib/postgresql/VERSION/bin)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    shape = {"n_images": 200, "captions_per_image": 2, "text_dim": 16, "image_dim": 24, "latent_dim": 6}
    data = write_flickr_like(root / "d.npz", make_synthetic(**shape))
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return data, root / "space.yaml"


def worker(files, url: str, study: str, out, trials: int) -> subprocess.Popen:
    data, space = files
    command = [sys.executable, "-m", "stitch", "tune", "--data", str(data), "--space", str(space)]
    command += ["--out", str(out), "--storage", url, "--study", study, "--trials", str(trials)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finished(url: str, study: str) -> list:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    try:
        return optuna.load_study(study_name=study, storage=url).get_trials(states=states)
    except KeyError:  # the worker has not created the study yet
        return []


def test_two_workers_share_one_study_without_running_a_trial_twice(postgres_url, files, tmp_path):
    workers = [worker(files, postgres_url, "shared", tmp_path / f"w{i}", trials=8) for i in range(2)]
    for process in workers:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-2000:]
    trials = finished(postgres_url, "shared")
    numbers = [t.number for t in trials]
    assert 8 <= len(trials) <= 9  # the study's total, at most one trial in flight past it
    assert len(set(numbers)) == len(numbers)
    lrs = [t.params["optim.lr"] for t in trials]
    assert len(set(lrs)) == len(lrs)  # every trial ran its own parameters once
    assert all(np.isfinite(t.value) for t in trials)


def test_killing_a_worker_loses_no_finished_trial(postgres_url, files, tmp_path):
    first = worker(files, postgres_url, "killed", tmp_path / "a", trials=30)
    deadline = time.time() + 300
    while len(finished(postgres_url, "killed")) < 2:
        assert time.time() < deadline and first.poll() is None, "the first worker finished no trial"
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = {t.number: t.value for t in finished(postgres_url, "killed")}
    second = worker(files, postgres_url, "killed", tmp_path / "b", trials=len(before) + 2)
    _, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-2000:]
    after = {t.number: t.value for t in finished(postgres_url, "killed")}
    assert all(after[number] == value for number, value in before.items())  # kept, untouched
    assert len(after) >= len(before) + 2
