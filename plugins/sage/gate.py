"""The SAGE gate (registered router ``SAGEGate``): one scalar per expert per image per layer, from the expert
residuals themselves.

For sample b and expert k (sage.md, stage 2):
    Omega_bk = Delta_bk with every token row L2-normalised over d_out   (N, d_out)
    e_bk     = <vec(Omega_bk), w>,   w in R^{N x d_out}, shared by the K experts, init 0
    g_b      = softmax_k(e_b / tau), tau a learnable scalar (init 1)
With w = 0 the gate is the uniform average (LoRA-Avg). Size: N * d_out per layer, independent of K
(+1 temperature). The temperature is used as ``max(tau, tau_min)``: nothing else keeps a learned tau positive, and
tau <= 0 would invert or break the softmax (the paper does not say how the authors prevent it).

Router inputs (``plugins.routers.Router``): the K residuals of a batch, as :class:`LowRankResiduals` (what
``GatedLoRALinear`` passes: Delta is never built), as the dense (B, K, N, d_out) tensor, or that tensor flattened
per sample (B, K * N * d_out), the registry's ``(B, d) -> (B, K)`` form (needs ``num_experts``). Output:
``RouterOutput(weights (B, K), aux_loss=None)``. Parameter names ``weight`` / ``tau`` are the stage-2 checkpoint
keys (``...gate.weight``, ``...gate.tau``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.gated_lora import LowRankResiduals, Residuals
from ..registry import ROUTER_REGISTRY
from ..routers.base import Router, RouterOutput

__all__ = ["SAGEGate", "as_residuals"]


def as_residuals(inputs: Residuals, *, num_experts: Optional[int], num_tokens: int, out_features: int,
                 router: str) -> Residuals:
    """The residuals as (B, K, N, d_out) (factored or dense): a per-sample flattened (B, K*N*d_out) tensor is
    unflattened with the router's K, N, d_out; anything else is returned as it is."""
    if isinstance(inputs, LowRankResiduals) or inputs.dim() == 4:
        return inputs
    if inputs.dim() == 2 and num_experts:
        size = num_experts * num_tokens * out_features
        if inputs.shape[1] != size:
            raise ValueError(f"{router} built for (K={num_experts}, N={num_tokens}, d_out={out_features}): flattened "
                             f"residuals need {size} values per sample, got shape {tuple(inputs.shape)}")
        return inputs.view(inputs.shape[0], num_experts, num_tokens, out_features)
    raise ValueError(f"{router} takes residuals (B, K, N, d_out), factored or dense, or (B, K*N*d_out) when built "
                     f"with num_experts; got shape {tuple(inputs.shape)}")


@ROUTER_REGISTRY.register()
class SAGEGate(Router):
    """Residuals Delta (B, K, N, d_out) -> ``RouterOutput(weights g (B, K), None)``, rows of g sum to 1."""

    def __init__(self, *, num_tokens: int, out_features: int, num_experts: Optional[int] = None, eps: float = 1e-6,
                 tau_init: float = 1.0, tau_min: float = 1e-2):
        """
        Args:
            num_tokens: N, tokens per sample (129 for ViT-B/16 at 256x128).
            out_features: d_out of the gated linear layer.
            num_experts: K, checked against the residuals; None: any K (the gate has no per-expert parameter).
            eps: lower bound of the row norm in the L2 normalisation (``F.normalize``).
            tau_init: initial softmax temperature.
            tau_min: floor of the temperature used in the softmax (> 0).
        """
        if not 0 < tau_min <= tau_init:
            raise ValueError(f"need 0 < tau_min <= tau_init, got tau_min={tau_min}, tau_init={tau_init}")
        # the Router base wants K > 0; with K unknown the check is done per call against the residuals' K
        super().__init__(num_experts=num_experts or 1)
        self.fixed_experts = num_experts is not None
        self.num_tokens = num_tokens
        self.out_features = out_features
        self.eps = eps
        self.tau_min = float(tau_min)
        self.weight = nn.Parameter(torch.zeros(num_tokens, out_features))  # w, shared across experts
        self.tau = nn.Parameter(torch.tensor(float(tau_init)))

    def logits(self, delta: Residuals) -> torch.Tensor:
        """Delta (B, K, N, d_out) -> e (B, K). Factored residuals give the same value without building Delta:
        ``e_bk = sum_n <Delta_bkn, w_n> / max(||Delta_bkn||, eps)``."""
        delta = as_residuals(delta, num_experts=self.num_experts if self.fixed_experts else None,
                             num_tokens=self.num_tokens, out_features=self.out_features, router="SAGEGate")
        if tuple(delta.shape[2:]) != (self.num_tokens, self.out_features):
            raise ValueError(f"SAGEGate built for (N={self.num_tokens}, d_out={self.out_features}) residuals, "
                             f"got shape {tuple(delta.shape)}")
        if isinstance(delta, LowRankResiduals):
            return (delta.inner(self.weight) / delta.row_norms(self.eps)).sum(-1)
        omega = F.normalize(delta, p=2.0, dim=-1, eps=self.eps)
        return torch.einsum("bkno,no->bk", omega, self.weight)

    def route(self, inputs: Residuals, **context) -> RouterOutput:
        """Residuals -> g (B, K) = softmax(e / max(tau, tau_min))."""
        return RouterOutput(torch.softmax(self.logits(inputs) / self.tau.clamp(min=self.tau_min), dim=1))

    def forward(self, inputs: Residuals, **context) -> RouterOutput:
        # K given: the base class checks the output's K; K open: it is whatever the residuals carry
        return super().forward(inputs, **context) if self.fixed_experts else self.route(inputs, **context)

    def extra_repr(self) -> str:
        k = f"num_experts={self.num_experts}, " if self.fixed_experts else ""
        return f"{k}num_tokens={self.num_tokens}, out_features={self.out_features}"
