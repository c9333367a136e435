"""Token-level sparse mixture of experts: experts x router -> output + auxiliary loss (cfg-free).

Every token is routed independently: the router (``plugins.routers.Router``) gives weights (..., K) that are
exactly 0 for the experts it did not select; each expert runs only on the tokens that selected it and the
outputs are summed with their weights. The router's ``aux_loss`` (e.g. the load-balancing loss of
``SoftmaxTopKRouter``) is passed through.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

from ..routers.base import Router

__all__ = ["MixtureOutput", "SparseMixture"]


class MixtureOutput(NamedTuple):
    """output: (..., d) weighted sum of the selected experts; weights: (..., K) the router's weights (0 = not
    selected); aux_loss: the router's auxiliary loss (scalar) or None."""
    output: torch.Tensor
    weights: torch.Tensor
    aux_loss: Optional[torch.Tensor]


class SparseMixture(nn.Module):
    """tokens (..., d) -> :class:`MixtureOutput`; ``experts.J`` and ``router`` are the parameter names."""

    def __init__(self, experts: Sequence[nn.Module], router: Router):
        """
        Args:
            experts: K modules mapping (n, d) -> (n, d_out).
            router: a Router with ``num_experts == K`` whose weights are exactly 0 for unselected experts.
        """
        super().__init__()
        if len(experts) != router.num_experts:
            raise ValueError(f"{len(experts)} experts but the router routes to {router.num_experts}")
        self.experts = nn.ModuleList(experts)
        self.router = router

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def forward(self, x: torch.Tensor, **context) -> MixtureOutput:
        routed = self.router(x, **context)
        weights = routed.weights  # (..., K)
        flat = x.reshape(-1, x.shape[-1])  # (T, d)
        w = weights.reshape(-1, weights.shape[-1])  # (T, K)
        out = None
        for k, expert in enumerate(self.experts):
            # every expert runs, on its tokens only (possibly none): its parameters stay in the graph and get a
            # (zero) gradient even when no token picked it
            idx = w[:, k].nonzero(as_tuple=True)[0]
            y = expert(flat.index_select(0, idx)) * w.index_select(0, idx)[:, k:k + 1].to(flat.dtype)
            if out is None:
                out = flat.new_zeros(flat.shape[0], y.shape[-1])
            out = out.index_add(0, idx, y)
        return MixtureOutput(out.reshape(*x.shape[:-1], out.shape[-1]), weights, routed.aux_loss)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}"
