"""MoLE gate (Wu et al., "Mixture of LoRA Experts", ICLR 2024), the baseline of SAGE's Tables 8/9; registered
router ``MoLEGate``.

Per layer: the K expert outputs are normalised (the same per-token L2 normalisation as the SAGE gate, so the
two gates differ only in their projection), concatenated and flattened to K*N*d_out values, and a learnable
projection ``P`` (K x K*N*d_out, one row per expert) gives the logits; ``g = softmax(logits / tau)``.
Size: K^2 * N * d_out per layer (+1 temperature), K^2 times the SAGE gate. ``P`` starts at 0 (LoRA-Avg), like
SAGE's ``w``. MoLE's auxiliary load-balancing loss is not part of the gate (``aux_loss`` is None).

With factored residuals the logits need no Delta either: ``P_j`` projected through each B_k is (K, N, r) per
output expert j, so ``e_bj = sum_{k,n} h_bkn . (B_k^T P_j[k, n]) / max(||Delta_bkn||, eps)``; the projection costs
K^2 N d_out r per forward (independent of the batch), on top of the gate's own K^2 N d_out parameters.

Inputs as :class:`plugins.sage.gate.SAGEGate` (factored, dense (B, K, N, d_out) or flattened (B, K*N*d_out)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.gated_lora import LowRankResiduals, Residuals
from ..registry import ROUTER_REGISTRY
from ..routers.base import Router, RouterOutput
from .gate import as_residuals

__all__ = ["MoLEGate"]


@ROUTER_REGISTRY.register()
class MoLEGate(Router):
    """Residuals Delta (B, K, N, d_out) -> ``RouterOutput(weights g (B, K), None)``, rows of g sum to 1."""

    def __init__(self, *, num_experts: int, num_tokens: int, out_features: int, eps: float = 1e-6,
                 tau_init: float = 1.0):
        """
        Args:
            num_experts: K.
            num_tokens: N, tokens per sample.
            out_features: d_out of the gated linear layer.
            eps: lower bound of the row norm in the L2 normalisation.
            tau_init: initial softmax temperature.
        """
        super().__init__(num_experts=num_experts)
        self.num_tokens = num_tokens
        self.out_features = out_features
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(num_experts, num_experts * num_tokens * out_features))
        self.tau = nn.Parameter(torch.tensor(float(tau_init)))

    def logits(self, delta: Residuals) -> torch.Tensor:
        """Delta (B, K, N, d_out) -> e (B, K)."""
        delta = as_residuals(delta, num_experts=self.num_experts, num_tokens=self.num_tokens,
                             out_features=self.out_features, router="MoLEGate")
        if tuple(delta.shape[1:]) != (self.num_experts, self.num_tokens, self.out_features):
            raise ValueError(f"MoLEGate built for (K={self.num_experts}, N={self.num_tokens}, "
                             f"d_out={self.out_features}) residuals, got shape {tuple(delta.shape)}")
        if isinstance(delta, LowRankResiduals):
            k, n, o = self.num_experts, self.num_tokens, self.out_features
            projected = torch.einsum("jkno,kor->jnkr", self.weight.view(k, k, n, o), delta.up)
            unit = delta.h / delta.row_norms(self.eps).transpose(1, 2).unsqueeze(-1)  # (B, N, K, r)
            return torch.einsum("bnkr,jnkr->bj", unit, projected)
        omega = F.normalize(delta, p=2.0, dim=-1, eps=self.eps)
        return F.linear(omega.flatten(1), self.weight)

    def route(self, inputs: Residuals, **context) -> RouterOutput:
        """Residuals -> g (B, K) = softmax(e / tau)."""
        return RouterOutput(torch.softmax(self.logits(inputs) / self.tau, dim=1))

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, num_tokens={self.num_tokens}, out_features={self.out_features}"
