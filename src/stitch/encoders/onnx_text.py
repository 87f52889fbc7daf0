"""The lean text path on ONNX Runtime: same tokenisation, padding groups, masked mean and normalisation
as :class:`stitch.encoders.text.TextEncoder`, with the Hugging Face transformer exported to ONNX.

Spec: ``onnx:minilm`` or ``onnx:/path/to/sentence-transformer`` (a transformer + mean pooling model, as
the lean path needs). The first construction exports the transformer (``input_ids``, ``attention_mask``
-> ``last_hidden_state``, dynamic batch and sequence axes) with ``torch.onnx.export``, checks the graph
against PyTorch on a batch of another shape, and writes it atomically to
``<cache>/onnx/<model hash>/model.onnx``; later constructions reuse it. The hash covers the weights, the
model config and the torch version, so a changed model never runs an old graph. ``<cache>`` is
``$STITCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/stitch``, else ``~/.cache/stitch``.

Only fp32: the embeddings equal the PyTorch ones to about 1e-6. ``sentence-transformers``' own
``backend="onnx"`` needs ``optimum``, whose releases pin transformers < 5, so stitch exports directly.
Needs ``pip install 'stitch[onnx]'`` (onnxruntime to run, onnx to export).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from stitch.encoders.text import _lean_parts, _resolve_text_path, encode_in_groups, pad_tokens
from stitch.errors import ModelOutputError, UsageError

OPSET = 17
EXPORT_FORMAT = 1  # bump when the exported graph changes, so caches written by older stitch are not reused
VERIFY_ATOL = 1e-4  # max |ONNX - PyTorch| of last_hidden_state accepted for a fresh export


class OnnxTextEncoder:
    """``encode(texts) -> (n, d) float32`` L2-normalised, like ``TextEncoder`` but on ONNX Runtime."""

    def __init__(
        self,
        spec: str,
        device: str = "cpu",
        batch_size: int = 64,
        precision: str = "fp32",
        cache_dir: str | Path | None = None,
        threads: int | None = None,
    ) -> None:
        import onnxruntime  # noqa: F401  (first, so a missing runtime fails before any model loads)

        if precision != "fp32":
            raise UsageError(f"the onnx text encoder runs fp32 only, got precision {precision!r}")
        if device != "cpu":
            raise UsageError(f"the onnx text encoder runs on the CPU only, got device {device!r}")
        self.spec, self.batch_size, self.precision = spec, batch_size, precision
        tokenizer, transformer, self.max_length = _load_lean(spec)
        self.tokenizer, self.pad = tokenizer, int(tokenizer.pad_token_id)
        self.dim = int(transformer.config.hidden_size)
        folder = Path(cache_dir) if cache_dir is not None else cache_root() / "onnx"
        self.path = folder / model_hash(transformer) / "model.onnx"
        if not self.path.exists():
            export_transformer(transformer, self.path, self.pad)
        self.session = _session(self.path, threads)

    @classmethod
    def from_spec(cls, spec: str, device: str = "cpu", precision: str = "fp32") -> OnnxTextEncoder:
        return cls(spec, device, precision=precision)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Tokenise once, run length-sorted padding groups through ONNX Runtime, masked mean, normalise."""

        def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            (hidden,) = self.session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})
            return mean_normalise(hidden, mask)

        return encode_in_groups(self.tokenizer, texts, self.max_length, self.batch_size, self.dim, run)


def mean_normalise(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked mean over tokens, then L2 normalisation (as sentence-transformers' Pooling + Normalize)."""
    weights = mask[..., None].astype(np.float32)
    pooled = (hidden.astype(np.float32) * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def cache_root() -> Path:
    """``$STITCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/stitch``, else ``~/.cache/stitch``."""
    if os.environ.get("STITCH_CACHE_DIR"):
        return Path(os.environ["STITCH_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stitch"


def model_hash(transformer) -> str:
    """SHA-256 (first 16 hex digits) of the weights, the config, the torch version and the export format."""
    import torch

    digest = hashlib.sha256()
    meta = {"format": EXPORT_FORMAT, "opset": OPSET, "torch": torch.__version__, "class": type(transformer).__name__}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    digest.update(transformer.config.to_json_string(use_diff=False).encode())
    for name, tensor in transformer.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def export_transformer(transformer, path: Path, pad: int) -> None:
    """Export ``transformer`` to ``path`` (atomically), after checking the graph against PyTorch."""
    import onnx  # noqa: F401  (the exporter needs it; importing it here names the missing package)
    import torch

    from stitch.io.atomic import atomic_write

    vocab = int(transformer.config.vocab_size)
    ids, mask = pad_tokens(_probe(vocab, (6, 3), seed=0), 6, pad)
    module = _last_hidden(transformer)
    axes = {name: {0: "batch", 1: "sequence"} for name in ("input_ids", "attention_mask", "last_hidden_state")}

    def write(tmp: Path) -> None:
        with torch.no_grad():
            torch.onnx.export(
                module,
                (torch.from_numpy(ids), torch.from_numpy(mask)),
                str(tmp),
                dynamo=False,  # the TorchScript exporter: no onnxscript needed, one self-contained file
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=OPSET,
            )
        _verify(module, tmp, pad, vocab)

    atomic_write(path, write)


def _verify(module, path: Path, pad: int, vocab: int) -> None:
    """Run the fresh graph on a batch of another shape (one row unpadded) and compare with PyTorch."""
    import torch

    ids, mask = pad_tokens(_probe(vocab, (13, 4, 10), seed=1), 13, pad)
    (ours,) = _session(path).run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})
    with torch.no_grad():
        theirs = module(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()
    diff = float(np.abs(np.where(mask[..., None] > 0, ours - theirs, 0.0)).max())
    if not diff <= VERIFY_ATOL:
        raise ModelOutputError(f"the ONNX export differs from PyTorch by {diff:.3g} (> {VERIFY_ATOL}); not cached")


def _last_hidden(transformer):
    """A torch module ``(input_ids, attention_mask) -> last_hidden_state`` around a Hugging Face transformer."""
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids, attention_mask):
            return self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return LastHidden().eval()


def _probe(vocab: int, lengths: tuple[int, ...], seed: int) -> list[list[int]]:
    """Made-up token rows of the given lengths (ids below the vocabulary size) to trace and check with."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=n).tolist() for n in lengths]


def _session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session with every graph optimisation and ``threads`` intra-op threads (default:
    one per usable core; fewer is faster on a machine other processes keep busy)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or _cores()
    options.inter_op_num_threads = 1
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":  # the same wait policy as torch's threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _load_lean(spec: str):
    """(tokenizer, transformer, max_length) of the sentence-transformers model an ``onnx:`` spec names."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    name = spec.removeprefix("onnx:")
    if not name:
        raise UsageError("an onnx text encoder spec is onnx:minilm or onnx:/path/to/sentence-transformer")
    path = _resolve_text_path("minilm" if name == "minilm" else f"st:{name}")
    parts = _lean_parts(SentenceTransformer(str(path), device="cpu").eval())
    if parts is None:
        raise UsageError(f"{spec!r}: the onnx encoder needs a transformer + mean pooling model (as the lean path)")
    return parts
