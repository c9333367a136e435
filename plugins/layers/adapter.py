"""Bottleneck adapter (Houlsby et al., 2019): ``x -> up(act(down(x)))``, the expert of sparse mixtures of adapters.

Cfg-free. With ``zero_init_up`` (the default) the up-projection's weight and bias start at zero, so a fresh
adapter outputs exactly 0 and a network it is added to starts as the frozen base model.
"""
from __future__ import annotations

from torch import nn

__all__ = ["BottleneckAdapter"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "quick_gelu": None}


class _QuickGELU(nn.Module):
    def forward(self, x):
        return x * (1.702 * x).sigmoid()


class BottleneckAdapter(nn.Module):
    """(..., d) -> (..., d): ``Linear(d, r) -> activation -> Linear(r, d)``; parameters ``down.*`` and ``up.*``."""

    def __init__(self, dim: int, bottleneck: int, *, activation: str = "relu", zero_init_up: bool = True):
        """
        Args:
            dim: d, the width of the tokens.
            bottleneck: r, the hidden width (DM-Adapter: d / 8).
            activation: "relu" (DM-Adapter), "gelu" or "quick_gelu".
            zero_init_up: start the up-projection (weight and bias) at zero: the adapter outputs 0 at first.
        """
        super().__init__()
        if int(dim) <= 0 or int(bottleneck) <= 0:
            raise ValueError(f"adapter widths must be > 0, got dim={dim}, bottleneck={bottleneck}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.down = nn.Linear(int(dim), int(bottleneck))
        self.act = _QuickGELU() if activation == "quick_gelu" else _ACTIVATIONS[activation]()
        self.up = nn.Linear(int(bottleneck), int(dim))
        if zero_init_up:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return self.up(self.act(self.down(x)))
