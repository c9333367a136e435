"""DM-Adapter's domain-aware router (DR): a token-level top-k router whose logits mix the token with a learned
per-block domain prompt.

    g = (1 - a) * LN3(x) W_g  +  a * p W_d          (W_g, W_d: bias-free d -> K; p: (d,) prompt; a: scalar)

Weights: softmax over the top-k logits only (others exactly 0); aux loss: the load-balancing loss of the full
softmax (``plugins.routers.top_k.load_balancing_loss``). ``a`` is unconstrained, as in the official code
(``feed_forward.alpha``, initialised to 0.5); ``p`` is initialised N(0, 1) (``task_param``).
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import ROUTER_REGISTRY
from ..routers.top_k import SoftmaxTopKRouter

__all__ = ["DomainAwareRouter"]


@ROUTER_REGISTRY.register()
class DomainAwareRouter(SoftmaxTopKRouter):
    """tokens (B, ..., d) -> weights (B, ..., K); parameters ``gate`` (W_g), ``domain_gate`` (W_d), ``prompt`` (p),
    ``alpha`` (a)."""

    def __init__(self, *, dim: int, num_experts: int, top_k: int = 2, alpha_init: float = 0.5,
                 prompt_init_std: float = 1.0):
        """
        Args:
            dim: d, the width of the routed tokens (and of the prompt p).
            num_experts: K.
            top_k: experts kept per token.
            alpha_init: initial mixing scalar a (0: a plain token router, 1: the prompt alone).
            prompt_init_std: std of the normal initialisation of p.
        """
        super().__init__(dim=dim, num_experts=num_experts, top_k=top_k, bias=False)
        self.domain_gate = nn.Linear(dim, num_experts, bias=False)
        self.prompt = nn.Parameter(torch.randn(dim) * float(prompt_init_std))
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def logits(self, inputs: torch.Tensor, **context) -> torch.Tensor:
        a = self.alpha.to(inputs.dtype)
        domain = self.domain_gate(self.prompt.to(inputs.dtype))  # (K,): the same prior for every token
        return (1 - a) * self.gate(inputs) + a * domain
