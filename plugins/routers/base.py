"""The router contract: ``Router.forward(inputs, **context) -> RouterOutput(weights (B, ..., K), aux_loss)``."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

__all__ = ["Router", "RouterOutput"]


class RouterOutput(NamedTuple):
    """weights: (B, ..., K) non-negative expert weights; aux_loss: scalar auxiliary loss, or None."""
    weights: torch.Tensor
    aux_loss: Optional[torch.Tensor] = None


class Router(nn.Module):
    """Base class of every registered router (see ``plugins.registry.ROUTER_REGISTRY`` for the contract).

    Subclasses set ``num_experts`` through this constructor and implement ``route``."""

    def __init__(self, *, num_experts: int):
        super().__init__()
        if int(num_experts) <= 0:
            raise ValueError(f"a router needs num_experts > 0, got {num_experts}")
        self.num_experts = int(num_experts)

    def route(self, inputs: torch.Tensor, **context) -> RouterOutput:
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor, **context) -> RouterOutput:
        out = self.route(inputs, **context)
        if out.weights.shape[-1] != self.num_experts:
            raise RuntimeError(f"{type(self).__name__} returned {out.weights.shape[-1]} expert weights, "
                               f"expected {self.num_experts}")
        return out

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}"
