"""PIFE: Patch-Integrated Feature Extractor (DeMo, Sec. "Patch-Integrated Feature Extractor").

One per modality: f_m = QuickGELU(Linear(2C -> C)(LayerNorm(2C)(cat[CLS_m, mean(patches_m)]))), CLS first (the
official ``{rgb,nir,tir}_reduce`` = Sequential(LayerNorm, Linear, QuickGELU)).
"""
from __future__ import annotations

import torch
from open_clip.transformer import QuickGELU
from torch import nn

__all__ = ["PIFE"]


class PIFE(nn.Module):
    """tokens (B, 1 + N, C) (CLS first, patches after; projected to C) -> enhanced feature f_m (B, C)."""

    def __init__(self, *, dim: int):
        """
        Args:
            dim: token width C (512 for CLIP ViT-B/16 after ``proj``).
        """
        super().__init__()
        self.norm = nn.LayerNorm(2 * dim)
        self.fc = nn.Linear(2 * dim, dim)
        self.act = QuickGELU()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3 or tokens.shape[1] < 2:
            raise ValueError(f"PIFE expects (B, 1 + N, C) tokens with N >= 1 patches, got {tuple(tokens.shape)}")
        pooled = torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1)  # (B, 2C): global + local
        return self.act(self.fc(self.norm(pooled)))
