"""Configs shipped inside the package (so a wheel install finds them): recipe YAMLs and tuning spaces,
addressed by name or by a path to a user's own YAML."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

KINDS = {"config": "configs", "space": "configs/spaces"}


def packaged_names(kind: str) -> list[str]:
    """Names of the shipped YAMLs of ``kind`` (``config`` or ``space``)."""
    folder = resources.files("stitch").joinpath(KINDS[kind])
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def resolve(name_or_path: str | Path, kind: str) -> Path:
    """A user's YAML path as it is, else the shipped YAML of that name; an error lists the names."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"{kind} file {path} does not exist")
        return path
    shipped = resources.files("stitch").joinpath(KINDS[kind], f"{name_or_path}.yaml")
    if not shipped.is_file():
        raise FileNotFoundError(f"no shipped {kind} named {name_or_path!r}; shipped: {packaged_names(kind)}")
    return Path(str(shipped))
