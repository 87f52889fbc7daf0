"""Helpers for the service tests: a fake searcher and text encoder (no model, no data), and a real uvicorn
server, configured as ``stitch serve`` configures it, on a free loopback port (in a thread or a subprocess)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np

TESTS = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running(app, **limits):
    """``app`` served by uvicorn in a thread, with the service's server config (``limits``: header_timeout_s,
    keep_alive_s, max_header_bytes); yields its base URL and stops it afterwards."""
    import uvicorn

    from stitch.apps.service.config import Limits
    from stitch.apps.service.server import server_config

    port = free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, Limits(**limits)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class FakeIndex:
    def __init__(self, n: int) -> None:
        self.names = np.array([f"img{i}.jpg" for i in range(n)])
        self.kind = "exact"

    def __len__(self) -> int:
        return len(self.names)


class FakeSearcher:
    """Scores a gallery of ``n`` random unit vectors by dot product, ``dim``-d queries. Like the real Searcher it
    refuses a batch holding a non-finite row with a ValueError, so one bad row fails the whole call."""

    def __init__(self, dim: int = 8, n: int = 20, seed: int = 0) -> None:
        gallery = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
        self.gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
        self.index, self.rescorer, self.text_dim = FakeIndex(n), None, dim
        self.calls: list[int] = []

    def translate(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float32)
        if not np.isfinite(rows).all():
            raise ValueError("query embeddings contain NaN/Inf")
        return rows

    def search(self, rows: np.ndarray, k: int) -> list[list[SimpleNamespace]]:
        self.calls.append(len(rows))
        scores = self.translate(rows) @ self.gallery.T
        order = np.argsort(-scores, axis=1)[:, :k]
        names = self.index.names
        return [
            [SimpleNamespace(name=str(names[j]), score=float(s[j]), row=int(j)) for j in top]
            for s, top in zip(scores, order)
        ]


class FakeTextEncoder:
    """Hashes a text to a unit vector; ``delay_s`` a call so concurrent queries pile into batches. Like the real
    fast tokenizer it raises TypeError on text that is not valid Unicode (a lone surrogate), and it raises
    TypeError on any text holding ``crash_on`` (an input no check foresaw)."""

    spec = "fake"

    def __init__(self, dim: int = 8, delay_s: float = 0.02, crash_on: str = "\u2620") -> None:
        self.dim, self.delay_s, self.crash_on = dim, delay_s, crash_on
        self.calls: list[int] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        time.sleep(self.delay_s)
        rows = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError:
                raise TypeError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, ...]]") from None
            if self.crash_on in text:
                raise TypeError(f"the tokenizer cannot take {self.crash_on!r}")
            seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
            row = np.random.default_rng(seed).standard_normal(self.dim)
            rows[i] = row / np.linalg.norm(row)
        return rows


def fake_app(images_dir: str | Path, title: str = "fake-run", delay_s: float = 0.02, cors_origins=None, **limits):
    """A service app over :class:`FakeSearcher` and :class:`FakeTextEncoder` (``limits``: Limits fields;
    ``cors_origins``: as ``ServeConfig`` takes them); the fakes are on ``app.state.searcher`` and
    ``app.state.encoder``."""
    from stitch.apps.service.app import create_app
    from stitch.apps.service.config import Limits, ServeConfig

    searcher = FakeSearcher()
    encoder = FakeTextEncoder(dim=searcher.text_dim, delay_s=delay_s)
    config = ServeConfig(title, "fake.npz", images_dir, cors_origins=cors_origins, limits=Limits(**limits))
    app = create_app(searcher, config, encoder, title=title)
    app.state.searcher, app.state.encoder = searcher, encoder
    return app


SERVER_SCRIPT = """
import sys, uvicorn
sys.path.insert(0, {tests!r})
from service_util import fake_app
from stitch.apps.service.config import Limits
from stitch.apps.service.server import server_config
limits = {limits!r}
app = fake_app({images!r}, **limits.pop("app"))
uvicorn.Server(server_config(app, "127.0.0.1", {port}, Limits(**limits))).run()
"""


@contextmanager
def server_process(images_dir: str | Path, app_limits: dict | None = None, **server_limits):
    """A fake-app service in its own process (so its memory can be read alone); yields ``(url, pid)``. The
    process is terminated afterwards, killed if it does not stop within 10 s."""
    import httpx

    port = free_port()
    limits = {"app": dict(app_limits or {}), **server_limits}
    script = SERVER_SCRIPT.format(tests=str(TESTS), limits=limits, images=str(images_dir), port=port)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server process exited with {proc.returncode}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("the server process did not start within 60 s")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc/<pid>/status (VmRSS, in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
