"""LoRA on the q, k, v and output projections of an ``nn.MultiheadAttention`` (Hu et al., 2021).

``nn.MultiheadAttention`` has no ``nn.Linear`` for q, k or v: they are the row blocks of one packed
``in_proj_weight`` (3d, d) (or three ``{q,k,v}_proj_weight`` when ``kdim``/``vdim`` differ from d). Its forward
also hands ``out_proj.weight`` / ``out_proj.bias`` straight to ``F.multi_head_attention_forward`` and never calls
``out_proj`` as a module, so a LoRA wrapper placed on ``out_proj`` (what peft does for the target "out_proj") is
silently bypassed. This layer therefore owns the whole attention: it keeps the frozen module as ``base_layer``
and gives each adapted target t in {q, k, v, out} its own pair ``lora_A.<t>.weight`` (r, d_in),
``lora_B.<t>.weight`` (d, r) (peft's names and initialisation), applied as ``W_t + s B_t A_t``; the update and the
residual of each target are those of ``plugins.layers.low_rank`` (one expert per target: d_in differs by target).
"""
from __future__ import annotations

import copy
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import ADAPTER_REGISTRY
from .low_rank import StackedLoRA, init_lora_

ATTENTION_TARGETS = ("q", "k", "v", "out")


@ADAPTER_REGISTRY.register()
class LoRAMultiheadAttention(nn.Module):
    """A frozen ``nn.MultiheadAttention`` with LoRA updates on any subset of its q, k, v and output projections.

    ``W_t -> W_t + s B_t A_t`` with ``s = alpha / r``. d = ``embed_dim``; d_in(q) = d_in(out) = d,
    d_in(k) = ``kdim``, d_in(v) = ``vdim``; ``A_t = lora_A[t].weight`` (r, d_in(t)), ``B_t = lora_B[t].weight`` (d, r).
    The forward has the signature, input layouts (``batch_first`` as the base) and return value
    ``(output, attention weights or None)`` of ``nn.MultiheadAttention.forward``, so a host module that calls
    ``self.attn(q, k, v, need_weights=False, attn_mask=...)`` (open_clip's blocks) runs it unchanged.
    """

    def __init__(self, base: nn.MultiheadAttention, *, targets: Sequence[str], rank: int, alpha: float,
                 dropout: float = 0.0):
        """
        Args:
            base: the pretrained attention; all its parameters are frozen (``requires_grad=False``).
            targets: the projections to adapt, any non-empty subset of ``("q", "k", "v", "out")``.
            rank: r, the rank of every update (> 0).
            alpha: LoRA alpha; each update is scaled by ``alpha / rank``.
            dropout: dropout probability on the input of the low-rank branches only (as peft's ``lora_dropout``).
        """
        super().__init__()
        if not isinstance(base, nn.MultiheadAttention):
            raise TypeError(f"LoRAMultiheadAttention wraps nn.MultiheadAttention, got {type(base).__name__}")
        unknown = [t for t in targets if t not in ATTENTION_TARGETS]
        if unknown or not targets:
            raise ValueError(f"attention targets must be a non-empty subset of {list(ATTENTION_TARGETS)}, "
                             f"got {list(targets)}")
        if rank <= 0:
            raise ValueError(f"LoRA rank must be > 0, got {rank}")
        self.base_layer = base
        self.targets: Tuple[str, ...] = tuple(t for t in ATTENTION_TARGETS if t in set(targets))
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        base.requires_grad_(False)
        weight = base.out_proj.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        d_in = {"q": base.embed_dim, "k": base.kdim, "v": base.vdim, "out": base.embed_dim}
        self.lora_A = nn.ModuleDict({t: nn.Linear(d_in[t], rank, bias=False, **factory) for t in self.targets})
        self.lora_B = nn.ModuleDict({t: nn.Linear(rank, base.embed_dim, bias=False, **factory)
                                     for t in self.targets})
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_lora_parameters()

    # Read-only views of the base's configuration, for host code that inspects its attention module.
    @property
    def embed_dim(self) -> int:
        return self.base_layer.embed_dim

    @property
    def num_heads(self) -> int:
        return self.base_layer.num_heads

    @property
    def batch_first(self) -> bool:
        return self.base_layer.batch_first

    def reset_lora_parameters(self) -> None:
        """peft's default: A ~ kaiming-uniform(a=sqrt(5)), B = 0, so the layer starts equal to the base."""
        for t in self.targets:
            init_lora_(self.lora_A[t].weight, self.lora_B[t].weight)

    def factors(self, target: str) -> StackedLoRA:
        """The adapter of one target as a one-expert :class:`StackedLoRA` view (no copy)."""
        if target not in self.targets:
            raise KeyError(f"{target!r} is not adapted here (adapted: {list(self.targets)})")
        return StackedLoRA.single(self.lora_A[target].weight, self.lora_B[target].weight, self.scaling)

    def delta_weight(self, target: str) -> Tensor:
        """The dense update ``s * B_t A_t`` (d, d_in(t)) of one adapted target, in the base's dtype."""
        return self.factors(target).delta().to(self.base_layer.out_proj.weight.dtype)

    def delta_weights(self) -> Dict[str, Tensor]:
        """``target -> s * B_t A_t`` (d, d_in(t)) for every adapted target."""
        return {t: self.delta_weight(t) for t in self.targets}

    @staticmethod
    def _target_weight(mha: nn.MultiheadAttention, target: str) -> Tensor:
        """The (d, d_in) weight of ``target`` inside ``mha``: a row block (a view) of the packed ``in_proj_weight``
        (q = rows [0, d), k = [d, 2d), v = [2d, 3d)), a separate ``{q,k,v}_proj_weight``, or ``out_proj.weight``."""
        if target == "out":
            return mha.out_proj.weight
        if mha._qkv_same_embed_dim:
            i, d = "qkv".index(target), mha.embed_dim
            return mha.in_proj_weight[i * d:(i + 1) * d]
        return getattr(mha, f"{target}_proj_weight")

    def _effective(self, target: str, deltas: Dict[str, Tensor]) -> Tensor:
        w = self._target_weight(self.base_layer, target)
        return w + deltas[target] if target in deltas else w

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        """As ``nn.MultiheadAttention.forward``: query (B, L, d) if ``batch_first`` else (L, B, d), or (L, d)
        unbatched; key (.., S, kdim), value (.., S, vdim) -> (output like query, weights (B, L, S) averaged over
        heads / (B, H, L, S) / None). Masks and flags have the base's meaning."""
        base = self.base_layer
        batched = query.dim() == 3
        if base.batch_first and batched:  # keep the ``is`` relations: they select torch's self-attention path
            if key is value:
                if query is key:
                    query = key = value = query.transpose(1, 0)
                else:
                    query, key = (x.transpose(1, 0) for x in (query, key))
                    value = key
            else:
                query, key, value = (x.transpose(1, 0) for x in (query, key, value))
        masks = dict(training=self.training, key_padding_mask=key_padding_mask, need_weights=need_weights,
                     attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        if self.training and isinstance(self.lora_dropout, nn.Dropout) and self.lora_dropout.p > 0:
            out, weights = self._forward_with_dropout(query, key, value, masks)
        else:
            out, weights = self._forward_folded(query, key, value, masks)
        if base.batch_first and batched:
            out = out.transpose(1, 0)
        return out, weights

    def _forward_folded(self, query: Tensor, key: Tensor, value: Tensor, masks: dict):
        # Folding is exact: each projection is linear, so x (W + s B A)^T = x W^T + s (x A^T) B^T; building the
        # effective weight once per call equals running the low-rank branch on every token (up to float rounding
        # order), and torch's attention kernel then runs unchanged, masks and all. It is cheap: one (d, r) @ (r, d_in)
        # product per adapted target (r d^2 multiply-adds and a transient d x d_in tensor, independent of batch
        # and sequence length; 4.7 M for ViT-B at r = 8, less than the branch costs on 3 images of 129 tokens).
        # In training, autograd forms the d x d_in gradient of the effective weight (one matmul the size of the
        # forward projection, as full fine-tuning does) and reduces it to A and B.
        base = self.base_layer
        deltas = self.delta_weights()
        qkv = {t: self._effective(t, deltas) for t in ("q", "k", "v")}
        if base._qkv_same_embed_dim:  # (3d, d): the adapted row blocks replaced, the others shared
            in_proj_weight = (torch.cat([qkv["q"], qkv["k"], qkv["v"]])
                              if any(t in deltas for t in ("q", "k", "v")) else base.in_proj_weight)
            separate = {}
        else:
            in_proj_weight = None
            separate = dict(use_separate_proj_weight=True, q_proj_weight=qkv["q"], k_proj_weight=qkv["k"],
                            v_proj_weight=qkv["v"])
        return F.multi_head_attention_forward(
            query, key, value, base.embed_dim, base.num_heads, in_proj_weight, base.in_proj_bias, base.bias_k,
            base.bias_v, base.add_zero_attn, base.dropout, self._effective("out", deltas), base.out_proj.bias,
            **masks, **separate)

    def _forward_with_dropout(self, query: Tensor, key: Tensor, value: Tensor, masks: dict):
        # Dropout on the LoRA input cannot be folded into a weight, so the adapted projections run explicitly
        # (``x W^T + b + s B A dropout(x)``) and torch's kernel gets identity projections where they were done
        # here: about one extra d x d matmul per token and target, in training with dropout only.
        base = self.base_layer
        d = base.embed_dim
        eye = torch.eye(d, device=query.device, dtype=query.dtype)
        in_targets = [t for t in ("q", "k", "v") if t in self.targets]
        if in_targets:
            bias = base.in_proj_bias.chunk(3) if base.in_proj_bias is not None else (None, None, None)
            inputs = dict(zip("qkv", (query, key, value)))
            proj = {t: self._project(t, inputs[t], self._target_weight(base, t), bias["qkv".index(t)])
                    for t in ("q", "k", "v")}
            query, key, value = proj["q"], proj["k"], proj["v"]
            in_args = dict(use_separate_proj_weight=True, q_proj_weight=eye, k_proj_weight=eye, v_proj_weight=eye)
            in_proj_weight, in_proj_bias = None, None
        elif base._qkv_same_embed_dim:
            in_args, in_proj_weight, in_proj_bias = {}, base.in_proj_weight, base.in_proj_bias
        else:
            in_args = dict(use_separate_proj_weight=True, q_proj_weight=base.q_proj_weight,
                           k_proj_weight=base.k_proj_weight, v_proj_weight=base.v_proj_weight)
            in_proj_weight, in_proj_bias = None, base.in_proj_bias
        adapt_out = "out" in self.targets
        out_w = eye if adapt_out else base.out_proj.weight
        out_b = None if adapt_out else base.out_proj.bias
        out, weights = F.multi_head_attention_forward(
            query, key, value, d, base.num_heads, in_proj_weight, in_proj_bias, base.bias_k, base.bias_v,
            base.add_zero_attn, base.dropout, out_w, out_b, **masks, **in_args)
        if adapt_out:
            out = self._project("out", out, base.out_proj.weight, base.out_proj.bias)
        return out, weights

    def _project(self, target: str, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        """x (..., d_in) -> x W^T + b [+ s B A dropout(x) when ``target`` is adapted] (..., d)."""
        y = F.linear(x, weight, bias)
        if target in self.targets:
            y = y + self.factors(target).residual(self.lora_dropout(x))
        return y

    def merged(self) -> nn.MultiheadAttention:
        """A new plain ``nn.MultiheadAttention`` (a copy of the base, same flags) with every ``s B_t A_t`` added to
        its target's weight rows: same outputs as this layer without dropout."""
        out = copy.deepcopy(self.base_layer)
        with torch.no_grad():
            for t, delta in self.delta_weights().items():
                self._target_weight(out, t).add_(delta)
        return out

    def extra_repr(self) -> str:
        return f"targets={list(self.targets)}, rank={self.rank}, alpha={self.alpha}"
