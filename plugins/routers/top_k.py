"""Softmax top-k router with the switch-style load-balancing loss (the sparse mixtures of DM-Adapter and DeMo)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import ROUTER_REGISTRY
from .base import Router, RouterOutput

__all__ = ["SoftmaxTopKRouter", "load_balancing_loss"]


def load_balancing_loss(probs: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """``sum_i mean(p_i) * mean(selected_i)`` over every routed token: probs (..., K) router softmax, selected
    (..., K) 0/1 top-k mask. Uniform probabilities with top-k of K give exactly k / K."""
    k = probs.shape[-1]
    return (probs.reshape(-1, k).mean(0) * selected.reshape(-1, k).float().mean(0)).sum()


@ROUTER_REGISTRY.register()
class SoftmaxTopKRouter(Router):
    """tokens (B, ..., d) -> weights (B, ..., K): a linear map to K logits, the top ``k`` kept and renormalised by a
    softmax over them (the others exactly 0); aux loss = ``load_balancing_loss`` on the full softmax."""

    def __init__(self, *, dim: int, num_experts: int, top_k: int = 2, bias: bool = False):
        """
        Args:
            dim: d, the width of the routed tokens.
            num_experts: K.
            top_k: experts kept per token (1 <= top_k <= K).
            bias: give the logit map a bias.
        """
        super().__init__(num_experts=num_experts)
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, {num_experts}], got {top_k}")
        self.top_k = int(top_k)
        self.gate = nn.Linear(dim, num_experts, bias=bias)

    def logits(self, inputs: torch.Tensor, **context) -> torch.Tensor:
        """(B, ..., d) -> routing logits (B, ..., K); subclasses that route differently override this only."""
        return self.gate(inputs)

    def route(self, inputs: torch.Tensor, **context) -> RouterOutput:
        logits = self.logits(inputs, **context)  # (B, ..., K)
        top, idx = logits.topk(self.top_k, dim=-1)
        weights = torch.zeros_like(logits).scatter(-1, idx, F.softmax(top, dim=-1))
        selected = torch.zeros_like(logits).scatter(-1, idx, 1.0)
        return RouterOutput(weights, load_balancing_loss(F.softmax(logits, dim=-1), selected))

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, top_k={self.top_k}"
