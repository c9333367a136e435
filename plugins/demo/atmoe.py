"""ATMoE: Attention-Triggered Mixture of Experts (DeMo, Sec. "Attention-Triggered Mixture of Experts"), and the
"Simple" gating of the paper's Table 6.

Attention gate (official code): x = cat of the n decoupled features (n C);
q = W_q BN(QuickGELU(W_red x)) (B, C), k = W_k D (B, n, C), both projections bias-free; split into H heads of
c = C / H: gate[b, h, j] = softmax_j(q_h . k_{j,h} / sqrt(c)).
Experts (official code, where the paper's Eq. 14-15 differ): expert (h, j) acts on CHUNK h of feature j,
E_{j,h} = BN_c(QuickGELU(Linear(c -> c)(D_j[:, h c:(h+1) c]))), scaled by gate[b, h, j]; the output is
feature-major: moe[b, j C + h c : j C + (h + 1) c] (n C, "concat") or the sum over j (C, "add"). No top-k, no
balancing loss.
Simple gate (Table 6): weights = softmax(Linear(n C -> n)(x)) (B, n), one whole-feature expert per decoupled
feature (H = 1); Simple^A adds the weighted experts, Simple^C concatenates them.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from open_clip.transformer import QuickGELU
from torch import nn

__all__ = ["ChunkExpert", "AttentionGate", "SimpleGate", "ATMoE", "GATES", "COMBINES"]

GATES = ("attention", "simple")
COMBINES = ("concat", "add")


class ChunkExpert(nn.Module):
    """(B, c) -> (B, c): Linear -> QuickGELU -> BatchNorm (the official ``expertHead.j.mlp``)."""

    def __init__(self, *, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), QuickGELU(), nn.BatchNorm1d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class AttentionGate(nn.Module):
    """Decoupled features D (B, n, C) -> weights (B, H, n), each row a softmax over the n features."""

    def __init__(self, *, dim: int, num_features: int, num_heads: int):
        """
        Args:
            dim: feature width C.
            num_features: n, the decoupled features (7 with HDM).
            num_heads: H; C must be divisible by H.
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"ATMoE: width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim = int(num_heads), dim // num_heads
        self.reduce = nn.Sequential(nn.Linear(num_features * dim, dim), QuickGELU(), nn.BatchNorm1d(dim))  # phi
        self.q = nn.Linear(dim, dim, bias=False)  # W_q
        self.k = nn.Linear(dim, dim, bias=False)  # W_k

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, n, c = feats.shape
        q = self.q(self.reduce(feats.reshape(b, n * c))).view(b, self.num_heads, 1, self.head_dim)
        k = self.k(feats).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, n, c)
        logits = (q @ k.transpose(-1, -2)).squeeze(2) / math.sqrt(self.head_dim)  # (B, H, n)
        return logits.softmax(dim=-1)


class SimpleGate(nn.Module):
    """Decoupled features D (B, n, C) -> weights (B, 1, n) = softmax(Linear(n C -> n)(cat D)) (Table 6)."""

    def __init__(self, *, dim: int, num_features: int):
        super().__init__()
        self.linear = nn.Linear(num_features * dim, num_features)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, n, c = feats.shape
        return self.linear(feats.reshape(b, n * c)).softmax(dim=-1).unsqueeze(1)


class ATMoE(nn.Module):
    """D (B, n, C) -> (moe feature (B, n C) for "concat" or (B, C) for "add", gate weights (B, H, n))."""

    def __init__(self, *, dim: int, num_features: int = 7, num_heads: int = 4, gate: str = "attention",
                 combine: str = "concat"):
        """
        Args:
            dim: feature width C.
            num_features: n decoupled features.
            num_heads: H chunks per feature (one expert per chunk and feature); 1 for the simple gate.
            gate: "attention" (ATMoE) or "simple" (Table 6's linear + softmax gate).
            combine: "concat" the weighted experts (n C) or "add" them (C).
        """
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"DEMO.GATE must be one of {GATES}, got {gate!r}")
        if combine not in COMBINES:
            raise ValueError(f"DEMO.COMBINE must be one of {COMBINES}, got {combine!r}")
        if gate == "simple" and num_heads != 1:
            raise ValueError(f"the simple gate weighs whole features: DEMO.MOE_HEADS must be 1, got {num_heads}")
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"DEMO.MOE_HEADS {num_heads} must divide the width {dim}")
        self.dim, self.num_features, self.num_heads = int(dim), int(num_features), int(num_heads)
        self.head_dim = dim // num_heads
        self.combine = combine
        self.out_dim = dim * num_features if combine == "concat" else dim
        self.gate = (AttentionGate(dim=dim, num_features=num_features, num_heads=num_heads) if gate == "attention"
                     else SimpleGate(dim=dim, num_features=num_features))
        # experts[h][j]: head h (outer) of feature j (inner), as the official checkpoint orders them
        self.experts = nn.ModuleList(nn.ModuleList(ChunkExpert(dim=self.head_dim) for _ in range(num_features))
                                     for _ in range(num_heads))

    def forward(self, feats: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        b, n, c = feats.shape
        if n != self.num_features or c != self.dim:
            raise ValueError(f"ATMoE built for (B, {self.num_features}, {self.dim}), got {tuple(feats.shape)}")
        weights = self.gate(feats)  # (B, H, n)
        chunks = feats.view(b, n, self.num_heads, self.head_dim)
        experts = torch.stack([torch.stack([self.experts[h][j](chunks[:, j, h]) for h in range(self.num_heads)],
                                           dim=1) for j in range(n)], dim=1)  # (B, n, H, c)
        weighted = experts * weights.transpose(1, 2).unsqueeze(-1)
        if self.combine == "concat":
            return weighted.reshape(b, n * c), weights  # feature-major: [j][h][c]
        return weighted.sum(dim=1).reshape(b, c), weights

    def extra_repr(self) -> str:
        return f"features={self.num_features}, heads={self.num_heads}, combine={self.combine}"
