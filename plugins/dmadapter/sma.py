"""Sparse Mixture of Adapters (SMA) inside open_clip's residual attention blocks.

:class:`SMABlock` replaces an open_clip ``ResidualAttentionBlock`` in place and keeps its modules under their
open_clip names (``ln_1``, ``attn``, ``ln_2``, ``mlp``, ...), so CLIP weights load into the injected towers
unchanged. The block computes (DM-Adapter, Eq. 3-5)::

    x <- x + Attn(LN1 x)
    (y, l) = SMA(LN3 x)                  LN3 a new LayerNorm; SMA a SparseMixture of bottleneck experts
    x <- x + MLP(LN2 x) + s * y          s: the tower's adapter scale (0.1 image, 4 text in the official code)

The routing of the last forward (weights (..., K) and the block's load-balancing loss) is kept in
``block.routing`` (a :class:`plugins.layers.moe.MixtureOutput`, or None for a single adapter) so that the towers'
own forward loops stay unchanged; the model sums the losses after each forward.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
from torch import nn

from ..layers.moe import MixtureOutput, SparseMixture

__all__ = ["SMABlock", "inject_sma", "sma_blocks"]


class SMABlock(nn.Module):
    """tokens (B, N, d) [or (N, B, d)] -> same shape; see the module docstring."""

    def __init__(self, block: nn.Module, adapter: nn.Module, *, scale: float):
        """
        Args:
            block: an open_clip ``ResidualAttentionBlock`` (self-attention only); its modules are taken over.
            adapter: a ``SparseMixture`` (routing recorded) or any (..., d) -> (..., d) module (a single adapter).
            scale: s, the factor of the adapter output.
        """
        super().__init__()
        if hasattr(block, "ln_1_kv") or not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
            raise TypeError(f"SMABlock wraps open_clip's self-attention ResidualAttentionBlock, got "
                            f"{type(block).__name__}")
        self.ln_1, self.attn, self.ls_1 = block.ln_1, block.attn, block.ls_1
        self.ln_2, self.mlp, self.ls_2 = block.ln_2, block.mlp, block.ls_2
        width = int(block.ln_1.normalized_shape[0])
        self.ln_3 = type(block.ln_2)(width)  # open_clip's LayerNorm class (computes in the input's dtype)
        self.sma = adapter
        self.scale = float(scale)
        self.routing: Optional[MixtureOutput] = None

    @property
    def width(self) -> int:
        return int(self.ln_3.normalized_shape[0])

    def forward(self, q_x: torch.Tensor, k_x: Optional[torch.Tensor] = None, v_x: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if k_x is not None or v_x is not None:
            raise ValueError("SMABlock is a self-attention block: k_x / v_x are not supported")
        h = self.ln_1(q_x)
        mask = attn_mask.to(q_x.dtype) if attn_mask is not None else None
        x = q_x + self.ls_1(self.attn(h, h, h, need_weights=False, attn_mask=mask)[0])
        h3 = self.ln_3(x)
        if isinstance(self.sma, SparseMixture):
            self.routing = self.sma(h3)
            y = self.routing.output
        else:
            self.routing = None
            y = self.sma(h3)
        return x + self.ls_2(self.mlp(self.ln_2(x))) + self.scale * y

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def inject_sma(transformer: nn.Module, make_adapter: Callable[[int], nn.Module], *, scale: float) -> List[SMABlock]:
    """Replace every block of an open_clip ``Transformer`` (``.resblocks``) by an :class:`SMABlock` in place;
    ``make_adapter(width)`` builds each block's adapter. Returns the new blocks."""
    blocks = getattr(transformer, "resblocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"inject_sma needs an open_clip Transformer with .resblocks, got {type(transformer).__name__}")
    for i, block in enumerate(blocks):
        if isinstance(block, SMABlock):
            raise ValueError(f"block {i} already has an SMA")
        width = int(block.ln_1.normalized_shape[0])
        blocks[i] = SMABlock(block, make_adapter(width), scale=scale)
    return list(blocks)


def sma_blocks(transformer: nn.Module) -> List[SMABlock]:
    return [b for b in transformer.resblocks if isinstance(b, SMABlock)]
