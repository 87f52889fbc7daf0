"""Trainable translators: a plain MLP and a residual MLP on top of a closed-form linear map."""

from __future__ import annotations

import torch
from torch import nn

from stitch.registries import ACTIVATIONS


def activation(name: str) -> nn.Module:
    return ACTIVATIONS.get(name, "model.activation")()


class MLP(nn.Module):
    """``depth`` hidden layers of ``hidden`` units, then a linear output layer."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 2048,
        depth: int = 1,
        dropout: float = 0.0,
        act: str = "gelu",
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth):
            layers.append(nn.Linear(width, hidden))
            if layer_norm:
                layers.append(nn.LayerNorm(hidden))
            layers += [activation(act), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)

    @property
    def output_layer(self) -> nn.Linear:
        return self.net[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResidualMLP(nn.Module):
    """A trainable linear map (initialised from a closed-form fit) plus an MLP correction.

    The correction's output layer starts at zero, so training starts exactly at the closed-form
    solution and can only move away from it where the loss says so.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 2048,
        depth: int = 1,
        dropout: float = 0.0,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.correction = MLP(in_dim, out_dim, hidden=hidden, depth=depth, dropout=dropout, act=act)
        nn.init.zeros_(self.correction.output_layer.weight)
        nn.init.zeros_(self.correction.output_layer.bias)

    def init_linear(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Start from ``x @ weight + bias`` (weight is in_dim x out_dim)."""
        with torch.no_grad():
            self.linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32).T)
            self.linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.correction(x)
