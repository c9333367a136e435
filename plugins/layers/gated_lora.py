"""A frozen linear layer with K frozen LoRA experts whose residuals are mixed by per-sample gate weights.

peft's multi-adapter LoRA layer mixes adapters with fixed weights (``add_weighted_adapter``) or one active
adapter at a time; a gate that looks at every expert's residual for every sample needs all K residuals in one
forward, so this layer computes them with one batched einsum over a stacked ``(K, r, d_in)`` / ``(K, d_out, r)``
pair instead of a loop over K adapters.

The residuals are never materialised. With ``h = s A x`` (r values per token per expert), everything the gates and
the output need is a function of h and the up-projections B (:class:`LowRankResiduals`), and h itself is one GEMM
with the stacked down-projections (K r, d_in):
``||Delta|| = sqrt(h^T (B^T B) h)``, ``<Delta, w> = h . (B^T w)`` and ``sum_k g_k Delta_k`` is one matmul of the
gate-weighted h (B, N, K r) with the stacked B (K r, d_out). So a forward costs O(B N K r (d_in + d_out)) and
holds (B, K, N, r) activations, not (B, K, N, d_out).
"""
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import nn


@dataclass
class LowRankResiduals:
    """K expert residuals of a batch kept factored: ``Delta[b, k, n] = B[k] @ h[b, n, k]``.

    ``h`` (B, N, K, r): the scaled down-projections ``s_k A_k x_bn`` (token-major: one GEMM makes it and one GEMM
    consumes it); ``up`` (K, d_out, r): the B_k. Outputs follow the dense residuals' (B, K, N, ...) order.
    """

    h: torch.Tensor
    up: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        """(B, K, N, d_out): the shape the dense residuals would have."""
        b, n, k, _ = self.h.shape
        return torch.Size((b, k, n, self.up.shape[1]))

    @property
    def dtype(self) -> torch.dtype:
        return self.h.dtype

    @property
    def device(self) -> torch.device:
        return self.h.device

    def row_norms(self, eps: float = 0.0) -> torch.Tensor:
        """(B, K, N): ``max(||Delta_bkn||, eps)`` (``F.normalize``'s denominator), via the r x r Gram B^T B."""
        gram = torch.einsum("kor,kos->krs", self.up, self.up)
        squared = torch.einsum("bnkr,krs,bnks->bkn", self.h, gram, self.h)
        return squared.clamp(min=eps * eps).sqrt() if eps > 0 else squared.clamp(min=0).sqrt()

    def inner(self, weight: torch.Tensor) -> torch.Tensor:
        """(B, K, N): ``<Delta_bkn, weight_n>`` for ``weight`` (N, d_out) shared by the experts."""
        projected = torch.einsum("no,kor->nkr", weight, self.up)  # B_k^T w_n
        return (self.h * projected).sum(-1).transpose(1, 2)

    def combine(self, g: torch.Tensor) -> torch.Tensor:
        """``sum_k g_bk Delta_bk``: g (B, K) -> (B, N, d_out), one matmul with the stacked up-projections."""
        b, n, k, r = self.h.shape
        weighted = (self.h * g[:, None, :, None]).reshape(b, n, k * r)
        return weighted @ self.up.transpose(1, 2).reshape(k * r, self.up.shape[1])

    def dense(self) -> torch.Tensor:
        """(B, K, N, d_out): the residuals themselves (for tests and analysis; the layer never builds them)."""
        return torch.einsum("bnkr,kor->bkno", self.h, self.up)


Residuals = Union[torch.Tensor, LowRankResiduals]


class GatedLoRALinear(nn.Module):
    """``Y_b = X_b W^T + bias + sum_k g_bk Delta_bk`` with ``Delta_bk = s_k X_b A_k^T B_k^T``.

    Shapes: ``X`` (B, N, d_in) -> ``Y`` (B, N, d_out); ``lora_A`` (K, r, d_in); ``lora_B`` (K, d_out, r);
    ``scaling`` (K,); residuals ``Delta`` (B, K, N, d_out), kept factored; gate weights ``g`` (B, K).

    The gate is any module mapping the residuals (a :class:`LowRankResiduals`, or the dense (B, K, N, d_out)
    tensor) to weights (B, K); ``None`` gives the uniform average ``g_bk = 1/K`` (LoRA-Avg). Base weights and expert factors are frozen; only the gate trains.
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
            gate: module ``residuals -> (B, K)`` weights, or None for the uniform average.
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

    def expert_residuals(self, x: torch.Tensor) -> LowRankResiduals:
        """All K residuals in one GEMM, factored: x (B, N, d_in) -> h (B, N, K, r) with the stacked B."""
        k, r, d_in = self.lora_A.shape
        h = torch.nn.functional.linear(x, self.lora_A.reshape(k * r, d_in))  # (B, N, K r)
        h = h.view(*x.shape[:2], k, r) * self.scaling.view(1, 1, k, 1)
        return LowRankResiduals(h, self.lora_B)

    def gate_weights(self, residuals: Residuals) -> torch.Tensor:
        """residuals -> g (B, K); uniform 1/K without a gate."""
        batch, k = residuals.shape[:2]
        if self.gate is None:
            return torch.full((batch, k), 1.0 / k, dtype=residuals.dtype, device=residuals.device)
        g = self.gate(residuals)
        if tuple(g.shape) != (batch, k):
            raise RuntimeError(f"gate returned shape {tuple(g.shape)}, expected {(batch, k)}")
        return g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, d_in) -> (B, N, d_out)."""
        if x.dim() != 3:
            raise ValueError(f"GatedLoRALinear expects (batch, tokens, features), got shape {tuple(x.shape)}")
        residuals = self.expert_residuals(x)
        g = self.gate_weights(residuals)
        self.last_gate_weights = g.detach()
        return self.base(x) + residuals.combine(g)

    def extra_repr(self) -> str:
        k, r, _ = self.lora_A.shape
        return f"experts={k}, rank={r}"
