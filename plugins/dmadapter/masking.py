"""BERT-style caption masking (the official DM-Adapter / IRRA training captions).

Every ordinary token (0 < id < ``mask_id``: not padding 0, not ``<start>`` 49406 / ``<end>`` 49407, not the mask
id itself) is selected with probability ``prob``; a selected token becomes ``mask_id`` with probability 0.8, a
uniformly random ordinary id in [1, ``mask_id`` - 1] with 0.1, and stays unchanged with 0.1. A caption in which
no token was selected gets its first word (position 1) masked, so every caption is masked somewhere.

The official tokenizer reserves id 49405 for ``<|mask|>`` by dropping OpenAI's last BPE merge ("jekyll</w>");
open_clip's tokenizer keeps that merge, so with it 49405 also encodes "jekyll" (absent from person captions).
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["MASK_TOKEN_ID", "mask_caption_tokens"]

MASK_TOKEN_ID = 49405


def mask_caption_tokens(tokens: torch.Tensor, *, prob: float = 0.15, mask_id: int = MASK_TOKEN_ID,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """tokens (B, L) int64 -> a masked copy (B, L); see the module docstring. Draws from ``generator`` (or torch's
    global RNG) on the tokens' device."""
    if not 0 < prob <= 1:
        raise ValueError(f"mask probability must be in (0, 1], got {prob}")
    dev = tokens.device
    eligible = (tokens > 0) & (tokens < mask_id)
    u = torch.rand(tokens.shape, generator=generator, device=dev)
    selected = eligible & (u < prob)
    action = u / prob  # uniform in [0, 1) given selection: the 80 / 10 / 10 split
    random_ids = torch.randint(1, mask_id, tokens.shape, generator=generator, device=dev)
    out = torch.where(selected & (action < 0.8), torch.full_like(tokens, mask_id), tokens)
    out = torch.where(selected & (action >= 0.8) & (action < 0.9), random_ids, out)
    none = ~selected.any(dim=1)
    if none.any() and tokens.shape[1] > 1:
        out[none, 1] = mask_id
    return out
