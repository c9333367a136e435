"""The LoRA residual ``s * B (A x)`` and its dense update ``s * B A``, written once for every layer of the package.

All low-rank layers here hold K experts' factors in one stacked form, :class:`StackedLoRA`:
``A`` (K, r, d_in), ``B`` (K, d_out, r), ``scaling`` (K,) (a single LoRA is K = 1), and compute through it:

- ``down(x)``: ``h = s_k A_k x`` for all K experts in ONE GEMM with the stacked (K r, d_in) down-projections;
- :class:`LowRankResiduals` ``(h, B)``: the K residuals ``Delta_k = B_k h_k`` of a batch, kept factored; its
  ``combine(g)`` is ``sum_k g_k Delta_k`` as ONE GEMM of the g-weighted h (.., K r) with the stacked B (K r, d_out);
- ``delta(weights)``: the dense update ``sum_k w_k s_k B_k A_k`` (d_out, d_in) that merging adds to ``W``.

Users: ``LoRALinear`` (K = 1), ``LoRAMultiheadAttention`` (K = 1 per projection), ``GatedLoRALinear`` (per-sample
gate weights over K experts), ``plugins.tuners.lorahub.LoraHubLinear`` (K coefficients shared by all samples) and
``plugins.tuners.merge_basic.lora_delta`` (the dense delta of one expert, input of the merge baselines).

peft stays the persistence format: experts are trained with peft's ``LoraLayer``, saved and loaded by
``plugins.tuners.expert_bank``, and turned into factors in one place (``expert_bank.lora_factors``). peft's
``LoraLayer`` is not used for the forms here because it has no per-sample weighted mixing of K adapters: it adds
its active adapters one after another with weight 1 (``adapter_names=`` picks ONE adapter per sample; fixed weights
need a merged copy, ``add_weighted_adapter``; X-LoRA predicts per-token weights from a first pass of a
transformers model, not from the residuals). So a gate whose weights depend on each sample and on the residuals
themselves (SAGE, MoLE) or coefficients trained through the forward (LoRAHub) cannot be expressed with it, and it
runs K separate low-rank branches where the stacked form runs one GEMM each way. Nor can it adapt q, k and v of a
packed ``in_proj_weight`` (see ``lora_attention``).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils import flop_counter

__all__ = ["LoRAFactors", "StackedLoRA", "LowRankResiduals", "LinearWrapper", "stack_factors", "init_lora_",
           "lora_residual", "lora_delta", "fold_delta"]

# torch's FlopCounterMode has a formula for addmm but not for the in-place addmm_ that ``add_combined_`` uses: without
# this, FLOP counts (benchmarks, paper tables) would silently leave the up-projection GEMM out.
if torch.ops.aten.addmm_ not in flop_counter.flop_registry:
    flop_counter.register_flop_formula(torch.ops.aten.addmm_)(
        lambda self_shape, a_shape, b_shape, *args, **kwargs: flop_counter.mm_flop(a_shape, b_shape))

# One expert in one layer, in peft's shapes: (A (r, d_in), B (d_out, r), scaling s = alpha / r).
LoRAFactors = Tuple[Tensor, Tensor, float]
Scaling = Union[Tensor, float]


@dataclass(frozen=True)
class LowRankResiduals:
    """K expert residuals of a batch kept factored: ``Delta[.., k, n] = B[k] @ h[.., n, k]``.

    ``h`` (*lead, K, r): the scaled down-projections ``s_k A_k x`` (token-major, as one GEMM makes them; for a
    gated layer *lead = (B, N)); ``up`` (K, d_out, r): the B_k. Gate-facing views (``shape``, ``row_norms``,
    ``inner``, ``dense``) follow the dense residuals' (B, K, N, d_out) order and need h (B, N, K, r).
    """

    h: Tensor
    up: Tensor
    # ``up`` laid out as the (K r, d_out) rows the GEMMs read; a layer whose B is frozen passes a cached copy
    # (re-laying B out costs a copy of it per forward otherwise).
    stacked_up: Optional[Tensor] = None

    @property
    def up_rows(self) -> Tensor:
        """(K r, d_out): row ``k r + j`` is column j of B_k."""
        if self.stacked_up is not None:
            return self.stacked_up
        k, d_out, r = self.up.shape
        return self.up.transpose(1, 2).reshape(k * r, d_out)

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

    def row_norms(self, eps: float = 0.0) -> Tensor:
        """(B, K, N): ``max(||Delta_bkn||, eps)`` (``F.normalize``'s denominator), via the r x r Gram B^T B."""
        gram = torch.einsum("kor,kos->krs", self.up, self.up)
        squared = torch.einsum("bnkr,krs,bnks->bkn", self.h, gram, self.h)
        return squared.clamp(min=eps * eps).sqrt() if eps > 0 else squared.clamp(min=0).sqrt()

    def inner(self, weight: Tensor) -> Tensor:
        """(B, K, N): ``<Delta_bkn, weight_n>`` for ``weight`` (N, d_out) shared by the experts."""
        k, _, r = self.up.shape
        projected = (weight @ self.up_rows.T).view(weight.shape[0], k, r)  # B_k^T w_n, one GEMM
        return (self.h * projected).sum(-1).transpose(1, 2)

    def _weighted(self, g: Optional[Tensor]) -> Tensor:
        """h scaled by the expert weights g (None, (K,) or (B, K)), flattened to (*lead, K r)."""
        *lead, k, r = self.h.shape
        h = self.h
        if g is not None:
            if g.dim() == 1:
                h = h * g[:, None]
            elif g.dim() == 2 and h.dim() == 4:
                h = h * g[:, None, :, None]
            else:
                raise ValueError(f"combine weights must be (K,) or (B, K) for h (B, N, K, r); got g "
                                 f"{tuple(g.shape)}, h {tuple(h.shape)}")
        return h.reshape(*lead, k * r)

    def combine(self, g: Optional[Tensor] = None) -> Tensor:
        """``sum_k g_k Delta_k`` (*lead, d_out) in one matmul with the stacked up-projections (K r, d_out).

        g: None (every expert weight 1), (K,) (weights shared by all samples) or (B, K) (per-sample weights,
        h (B, N, K, r)).
        """
        return self._weighted(g) @ self.up_rows

    def add_combined_(self, out: Tensor, g: Optional[Tensor] = None) -> Tensor:
        """``out += combine(g)`` in place, as one ``addmm_`` (no (*lead, d_out) temporary, no extra pass over
        ``out``); returns ``out``. ``out`` (*lead, d_out), e.g. the base layer's output, which autograd does not
        need for its own backward."""
        if not out.is_contiguous() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            # the ONNX tracer drops an in-place write made through a view of ``out`` (measured: export parity
            # 0.6 instead of < 1e-4), so exports take the out-of-place form
            return out + self.combine(g)
        weighted = self._weighted(g)
        out.view(-1, out.shape[-1]).addmm_(weighted.reshape(-1, weighted.shape[-1]), self.up_rows)
        return out

    def dense(self) -> Tensor:
        """(B, K, N, d_out): the residuals themselves (for tests and analysis; the layers never build them)."""
        return torch.einsum("bnkr,kor->bkno", self.h, self.up)


@dataclass(frozen=True)
class StackedLoRA:
    """K LoRA experts of one linear map, stacked: ``A`` (K, r, d_in), ``B`` (K, d_out, r), ``scaling`` (K,) tensor
    or one float for all experts. A view over a layer's own tensors (no copy): autograd flows to them."""

    A: Tensor
    B: Tensor
    scaling: Scaling

    @classmethod
    def single(cls, lora_A: Tensor, lora_B: Tensor, scaling: Scaling) -> "StackedLoRA":
        """One expert (K = 1) from peft-shaped factors A (r, d_in), B (d_out, r)."""
        return cls(lora_A.unsqueeze(0), lora_B.unsqueeze(0), scaling)

    def down(self, x: Tensor) -> Tensor:
        """x (..., d_in) -> h (..., K, r) = ``s_k A_k x``, one GEMM with the stacked (K r, d_in) down-projections."""
        k, r, d_in = self.A.shape
        h = F.linear(x, self.A.reshape(k * r, d_in))  # (..., K r)
        s = self.scaling.view(k, 1) if isinstance(self.scaling, Tensor) else self.scaling  # per expert, or one float
        return h.view(*x.shape[:-1], k, r) * s

    def residuals(self, x: Tensor, stacked_up: Optional[Tensor] = None) -> LowRankResiduals:
        """x (..., d_in) -> the K residuals, factored (h (..., K, r) with the stacked B; ``stacked_up``: B laid out
        as (K r, d_out) when the caller keeps that copy)."""
        return LowRankResiduals(self.down(x), self.B, stacked_up)

    def residual(self, x: Tensor, weights: Optional[Tensor] = None) -> Tensor:
        """x (..., d_in) -> ``sum_k w_k s_k B_k A_k x`` (..., d_out); weights None (all 1), (K,) or (B, K)."""
        return self.residuals(x).combine(weights)

    def delta(self, weights: Optional[Tensor] = None) -> Tensor:
        """The dense update ``sum_k w_k s_k B_k A_k`` (d_out, d_in); weights None (all 1) or (K,)."""
        k, r, d_in = self.A.shape
        per_expert = isinstance(self.scaling, Tensor)
        a = self.A * self.scaling.view(k, 1, 1) if per_expert else self.A  # s_k A_k (a float scales the sum)
        if weights is not None:
            a = a * weights.reshape(k, 1, 1).to(a)
        up = self.B.transpose(0, 1).reshape(self.B.shape[1], k * r)  # [B_1 .. B_K] (d_out, K r)
        delta = up @ a.reshape(k * r, d_in)
        return delta if per_expert else self.scaling * delta


class LinearWrapper(nn.Module):
    """Base of the layers that stand in for a frozen ``nn.Linear`` held as ``self.base``: host code that asks the
    module it holds for its sizes gets the base's."""

    base: nn.Linear

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features


def stack_factors(lora_A: Sequence[Tensor], lora_B: Sequence[Tensor], scaling: Sequence[float], *,
                  in_features: int, out_features: int, like: Tensor, pad_ranks: bool = False) -> StackedLoRA:
    """K peft-shaped experts (A_k (r_k, d_in), B_k (d_out, r_k), s_k) -> one detached :class:`StackedLoRA` in
    ``like``'s dtype and device, after checking they fit a linear ``in_features -> out_features``.

    Experts of different ranks raise unless ``pad_ranks``: then each is zero-padded to the largest rank (zero rows
    of A and columns of B add exact zeros, so every residual and delta is unchanged).
    """
    k = len(lora_A)
    if k == 0 or len(lora_B) != k or len(scaling) != k:
        raise ValueError(f"need K >= 1 experts with matching A/B/scaling, got {len(lora_A)}/{len(lora_B)}/"
                         f"{len(scaling)}")
    for i, (a, b) in enumerate(zip(lora_A, lora_B)):
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1] or a.shape[1] != in_features \
                or b.shape[0] != out_features:
            raise ValueError(f"expert {i}: A {tuple(a.shape)} / B {tuple(b.shape)} do not fit a linear "
                             f"{in_features}->{out_features}")
    ranks = sorted({a.shape[0] for a in lora_A})
    if len(ranks) > 1 and not pad_ranks:
        raise ValueError(f"all experts of a stacked layer must share one rank, got ranks {ranks}")
    r = ranks[-1]
    a = torch.stack([F.pad(x.detach(), (0, 0, 0, r - x.shape[0])) for x in lora_A]).to(like)
    b = torch.stack([F.pad(x.detach(), (0, r - x.shape[1])) for x in lora_B]).to(like)
    s = torch.tensor([float(v) for v in scaling], dtype=like.dtype, device=like.device)
    return StackedLoRA(a, b, s)


@torch.no_grad()
def init_lora_(lora_A: Tensor, lora_B: Tensor) -> None:
    """peft's default initialisation, in place: A ~ kaiming-uniform(a=sqrt(5)) (nn.Linear's), B = 0, so the
    residual starts at exactly 0 and the adapted layer equals its base."""
    nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5))
    nn.init.zeros_(lora_B)


def lora_residual(x: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float) -> Tensor:
    """One expert's residual ``s B A x``: x (..., d_in), A (r, d_in), B (d_out, r) -> (..., d_out)."""
    return StackedLoRA.single(lora_A, lora_B, scaling).residual(x)


def lora_delta(lora_A: Tensor, lora_B: Tensor, scaling: float) -> Tensor:
    """One expert's dense update ``s B A`` (d_out, d_in) from peft's A (r, d_in) and B (d_out, r)."""
    if lora_A.dim() != 2 or lora_B.dim() != 2 or lora_A.shape[0] != lora_B.shape[1]:
        raise ValueError(
            f"LoRA factors must be A (r, d_in) and B (d_out, r); got A {tuple(lora_A.shape)}, B {tuple(lora_B.shape)}"
        )
    return StackedLoRA.single(lora_A, lora_B, scaling).delta()


def fold_delta(base: nn.Linear, delta: Tensor) -> nn.Linear:
    """A copy of ``base`` with weight ``W + delta`` (cast to the base's dtype): inference without the low-rank
    branch at a plain linear's cost; device, bias and ``requires_grad`` are the base's."""
    out = copy.deepcopy(base)
    with torch.no_grad():
        out.weight += delta.detach().to(out.weight.dtype)
    return out
