"""A frozen linear layer with K frozen LoRA experts whose residuals are mixed by per-sample gate weights.

peft's multi-adapter LoRA layer mixes adapters with fixed weights (``add_weighted_adapter``) or one active
adapter at a time; a gate that looks at every expert's residual for every sample needs all K residuals in one
forward, so this layer computes them with one batched einsum over a stacked ``(K, r, d_in)`` / ``(K, d_out, r)``
pair instead of a loop over K adapters.
"""
from typing import Optional, Sequence

import torch
from torch import nn


class GatedLoRALinear(nn.Module):
    """``Y_b = X_b W^T + bias + sum_k g_bk Delta_bk`` with ``Delta_bk = s_k X_b A_k^T B_k^T``.

    Shapes: ``X`` (B, N, d_in) -> ``Y`` (B, N, d_out); ``lora_A`` (K, r, d_in); ``lora_B`` (K, d_out, r);
    ``scaling`` (K,); residuals ``Delta`` (B, K, N, d_out); gate weights ``g`` (B, K).

    The gate is any module mapping ``Delta`` (B, K, N, d_out) to weights (B, K); ``None`` gives the uniform
    average ``g_bk = 1/K`` (LoRA-Avg). Base weights and expert factors are frozen; only the gate trains.
    The last gate weights are kept (detached) in ``last_gate_weights`` for analysis.
    """

    def __init__(self, base: nn.Linear, *, lora_A: Sequence[torch.Tensor], lora_B: Sequence[torch.Tensor],
                 scaling: Sequence[float], gate: Optional[nn.Module] = None):
        """
        Args:
            base: the shared linear layer (weight (d_out, d_in), optional bias); frozen.
            lora_A: K down-projections, each (r, d_in); all K must have the same rank r.
            lora_B: K up-projections, each (d_out, r).
            scaling: K residual scales s_k (alpha_k / r_k).
            gate: module ``(B, K, N, d_out) -> (B, K)`` weights, or None for the uniform average.
        """
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"GatedLoRALinear wraps nn.Linear, got {type(base).__name__}")
        k = len(lora_A)
        if k == 0 or len(lora_B) != k or len(scaling) != k:
            raise ValueError(f"need K >= 1 experts with matching A/B/scaling, got {len(lora_A)}/{len(lora_B)}/"
                             f"{len(scaling)}")
        ranks = {a.shape[0] for a in lora_A} | {b.shape[1] for b in lora_B}
        if len(ranks) != 1:
            raise ValueError(f"all experts of a gated layer must share one rank, got ranks {sorted(ranks)}")
        for i, (a, b) in enumerate(zip(lora_A, lora_B)):
            if a.shape[1] != base.in_features or b.shape[0] != base.out_features:
                raise ValueError(f"expert {i}: A {tuple(a.shape)} / B {tuple(b.shape)} do not fit a linear "
                                 f"{base.in_features}->{base.out_features}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        ref = base.weight
        # Frozen Parameters (not buffers) so parameter counts include the experts, as in the paper's tables.
        self.lora_A = nn.Parameter(torch.stack([a.detach() for a in lora_A]).to(ref), requires_grad=False)
        self.lora_B = nn.Parameter(torch.stack([b.detach() for b in lora_B]).to(ref), requires_grad=False)
        self.register_buffer("scaling", torch.tensor([float(s) for s in scaling], dtype=ref.dtype,
                                                     device=ref.device))
        self.gate = gate
        self.last_gate_weights: Optional[torch.Tensor] = None

    @property
    def num_experts(self) -> int:
        return self.lora_A.shape[0]

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def expert_residuals(self, x: torch.Tensor) -> torch.Tensor:
        """All K residuals in one pass: x (B, N, d_in) -> Delta (B, K, N, d_out)."""
        h = torch.einsum("bni,kri->bknr", x, self.lora_A)
        return torch.einsum("bknr,kor->bkno", h, self.lora_B) * self.scaling.view(1, -1, 1, 1)

    def gate_weights(self, delta: torch.Tensor) -> torch.Tensor:
        """Delta (B, K, N, d_out) -> g (B, K); uniform 1/K without a gate."""
        if self.gate is None:
            return delta.new_full(delta.shape[:2], 1.0 / self.num_experts)
        g = self.gate(delta)
        if g.shape != delta.shape[:2]:
            raise RuntimeError(f"gate returned shape {tuple(g.shape)}, expected {tuple(delta.shape[:2])}")
        return g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, d_in) -> (B, N, d_out)."""
        if x.dim() != 3:
            raise ValueError(f"GatedLoRALinear expects (batch, tokens, features), got shape {tuple(x.shape)}")
        delta = self.expert_residuals(x)
        g = self.gate_weights(delta)
        self.last_gate_weights = g.detach()
        return self.base(x) + torch.einsum("bk,bkno->bno", g, delta)

    def extra_repr(self) -> str:
        k, r, _ = self.lora_A.shape
        return f"experts={k}, rank={r}"
