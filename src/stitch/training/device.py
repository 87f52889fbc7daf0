"""Device choice and mixed precision: CUDA with bf16 autocast when present, CPU otherwise."""

from __future__ import annotations

import contextlib

import torch

from stitch.errors import StateError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StateError(f"device {name!r} asked for, but CUDA is not available here; use device=auto or cpu")
    return device


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (no loss scaling needed); a no-op on CPU, where it would not speed up."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
