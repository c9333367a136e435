"""HDM: Hierarchical Decoupling Module (DeMo, Sec. "Hierarchical Decoupling Module").

X_m = [f_m; patches_m] per modality m in (R, N, T). Seven learnable queries (1 x C each) attend, through seven
``nn.MultiheadAttention(C, heads, dropout)``, to key = value = one token set each:

    r: X_R   n: X_N   t: X_T   rn: [X_R; X_N]   rt: [X_R; X_T]   nt: [X_N; X_T]   rnt: [X_R; X_N; X_T]

No residual, no LayerNorm, no FFN (as the official code). The feature order is ``DECOUPLED`` =
[r, n, t, rn, rt, nt, rnt] everywhere: the official code concatenates in this order (the paper's "RN, NT, TR"
order is not what it runs, and changes the feature).
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from torch import nn

__all__ = ["HDM", "DECOUPLED", "decoupled_sets"]

# name of each decoupled feature -> indices of the modalities (in the model's modality order) its query sees.
DECOUPLED: Tuple[Tuple[str, Tuple[int, ...]], ...] = (
    ("r", (0,)), ("n", (1,)), ("t", (2,)), ("rn", (0, 1)), ("rt", (0, 2)), ("nt", (1, 2)), ("rnt", (0, 1, 2)))


def decoupled_sets(sequences: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The key/value token set of each query: ``sequences`` = [X_R, X_N, X_T], each (B, L, C) ->
    {name: (B, k * L, C)} concatenated along the tokens in the modality order."""
    if len(sequences) != 3:
        raise ValueError(f"HDM decouples exactly three modalities, got {len(sequences)}")
    return {name: torch.cat([sequences[i] for i in idx], dim=1) for name, idx in DECOUPLED}


class HDM(nn.Module):
    """[X_R, X_N, X_T] (each (B, 1 + N, C)) -> decoupled features D (B, 7, C) in ``DECOUPLED`` order."""

    def __init__(self, *, dim: int, num_heads: int = 8, dropout: float = 0.1, init_std: float = 0.02):
        """
        Args:
            dim: token width C.
            num_heads: heads of each cross-attention (8 in the official code).
            dropout: attention-weight dropout of each cross-attention (0.1 in the official code).
            init_std: std of the truncated-normal initialisation of the queries.
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"HDM: width {dim} is not divisible by {num_heads} heads")
        self.names = tuple(name for name, _ in DECOUPLED)
        self.queries = nn.ParameterDict({n: nn.Parameter(torch.zeros(1, 1, dim)) for n in self.names})
        for q in self.queries.values():
            nn.init.trunc_normal_(q, std=init_std)
        self.attn = nn.ModuleDict({n: nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
                                   for n in self.names})

    def forward(self, sequences: Sequence[torch.Tensor]) -> torch.Tensor:
        sets = decoupled_sets(sequences)
        batch = sequences[0].shape[0]
        out = []
        for name in self.names:
            kv = sets[name]
            query = self.queries[name].expand(batch, -1, -1).to(kv.dtype)
            out.append(self.attn[name](query, kv, kv, need_weights=False)[0][:, 0])  # (B, C)
        return torch.stack(out, dim=1)

    def extra_repr(self) -> str:
        return f"queries={list(self.names)}"
