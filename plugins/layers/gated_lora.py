"""A frozen linear layer with K frozen LoRA experts whose residuals are mixed by per-sample gate weights.

peft's multi-adapter LoRA layer mixes adapters with fixed weights (``add_weighted_adapter``) or one active
adapter at a time; a gate that looks at every expert's residual for every sample needs all K residuals in one
forward (see ``plugins.layers.low_rank`` for why peft's layer cannot do it), so this layer holds the experts in
the stacked ``(K, r, d_in)`` / ``(K, d_out, r)`` form and computes them through :class:`StackedLoRA`.

The residuals are never materialised. With ``h = s A x`` (r values per token per expert), everything the gates and
the output need is a function of h and the up-projections B (:class:`LowRankResiduals`), and h itself is one GEMM
with the stacked down-projections (K r, d_in):
``||Delta|| = sqrt(h^T (B^T B) h)``, ``<Delta, w> = h . (B^T w)`` and ``sum_k g_k Delta_k`` is one matmul of the
gate-weighted h (B, N, K r) with the stacked B (K r, d_out). So a forward costs O(B N K r (d_in + d_out)) and
holds (B, K, N, r) activations, not (B, K, N, d_out).
"""
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .low_rank import LinearWrapper, LowRankResiduals, StackedLoRA, stack_factors

__all__ = ["GatedLoRALinear", "LowRankResiduals", "Residuals"]

# What a gate receives: the factored residuals, or (in tests and analysis) the dense (B, K, N, d_out) tensor.
Residuals = Union[torch.Tensor, LowRankResiduals]


class GatedLoRALinear(LinearWrapper):
    """``Y_b = X_b W^T + bias + sum_k g_bk Delta_bk`` with ``Delta_bk = s_k X_b A_k^T B_k^T``.

    Shapes: ``X`` (B, N, d_in) -> ``Y`` (B, N, d_out); ``lora_A`` (K, r, d_in); ``lora_B`` (K, d_out, r);
    ``scaling`` (K,); residuals ``Delta`` (B, K, N, d_out), kept factored; gate weights ``g`` (B, K).

    The gate is a router (``plugins.routers.Router``) mapping the residuals (a :class:`LowRankResiduals`, or the
    dense (B, K, N, d_out) tensor) to ``RouterOutput`` weights (B, K); ``None`` gives the uniform average ``g_bk = 1/K`` (LoRA-Avg). Base weights and
    expert factors are frozen; only the gate trains. The last gate weights are kept (detached) in
    ``last_gate_weights`` for analysis.
    """

    def __init__(self, base: nn.Linear, *, lora_A: Sequence[torch.Tensor], lora_B: Sequence[torch.Tensor],
                 scaling: Sequence[float], gate: Optional[nn.Module] = None):
        """
        Args:
            base: the shared linear layer (weight (d_out, d_in), optional bias); frozen.
            lora_A: K down-projections, each (r, d_in); all K must have the same rank r.
            lora_B: K up-projections, each (d_out, r).
            scaling: K residual scales s_k (alpha_k / r_k).
            gate: router ``residuals -> RouterOutput(weights (B, K))``, or None for the uniform average.
        """
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"GatedLoRALinear wraps nn.Linear, got {type(base).__name__}")
        stacked = stack_factors(lora_A, lora_B, scaling, in_features=base.in_features,
                                out_features=base.out_features, like=base.weight)
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        # Frozen Parameters (not buffers) so parameter counts include the experts, as in the paper's tables.
        self.lora_A = nn.Parameter(stacked.A, requires_grad=False)
        self.lora_B = nn.Parameter(stacked.B, requires_grad=False)
        self.register_buffer("scaling", stacked.scaling)
        self.gate = gate
        self.last_gate_weights: Optional[torch.Tensor] = None
        self._up_rows_cache: Optional[tuple] = None  # (version key, B as (K r, d_out)); see _up_rows

    @property
    def num_experts(self) -> int:
        return self.lora_A.shape[0]

    def factors(self) -> StackedLoRA:
        """The K experts as a :class:`StackedLoRA` view of this layer's tensors."""
        return StackedLoRA(self.lora_A, self.lora_B, self.scaling)

    def _up_rows(self) -> Optional[torch.Tensor]:
        """The frozen B_k laid out once as the (K r, d_out) rows the GEMMs read, instead of a transposed copy of B
        in every forward. Re-made when ``lora_B`` changes (new storage, or an in-place write such as
        ``load_state_dict``: its version counter moves); None when B trains (then the layout stays in the graph)."""
        b = self.lora_B
        if b.requires_grad:
            return None
        key = (b.data_ptr(), b._version, b.dtype, b.device)
        if self._up_rows_cache is None or self._up_rows_cache[0] != key:
            k, d_out, r = b.shape
            self._up_rows_cache = (key, b.detach().transpose(1, 2).reshape(k * r, d_out).contiguous())
        return self._up_rows_cache[1]

    def expert_residuals(self, x: torch.Tensor) -> LowRankResiduals:
        """All K residuals in one GEMM, factored: x (B, N, d_in) -> h (B, N, K, r) with the stacked B."""
        return self.factors().residuals(x, self._up_rows())

    def gate_weights(self, residuals: Residuals) -> torch.Tensor:
        """residuals -> g (B, K); uniform 1/K without a gate. The gate is a router (``plugins.routers.Router``):
        its ``RouterOutput.weights`` are g; a router's auxiliary loss has no path out of this layer, so one that
        returns an ``aux_loss`` is refused rather than silently dropped."""
        batch, k = residuals.shape[:2]
        if self.gate is None:
            return torch.full((batch, k), 1.0 / k, dtype=residuals.dtype, device=residuals.device)
        out = self.gate(residuals)
        if out.aux_loss is not None:
            raise RuntimeError(f"{type(self.gate).__name__} returned an aux_loss, which GatedLoRALinear cannot "
                               f"pass on to the training loss")
        g = out.weights
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
        return residuals.add_combined_(self.base(x), g)

    def extra_repr(self) -> str:
        k, r, _ = self.lora_A.shape
        return f"experts={k}, rank={r}"
