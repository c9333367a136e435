"""CLIP text tower (open_clip's ``CLIP`` text half) from token ids, or from token embeddings in which learned
vectors are spliced into a template (prompt learning: CLIP-ReID's identity prompts, and later methods).

Causal transformer over (token embeddings + positional embedding) -> ``ln_final`` -> the feature at the EOT
position -> ``@ text_projection``. Parameters keep OpenAI's / open_clip's names (``token_embedding.weight``,
``positional_embedding``, ``transformer.resblocks.N...``, ``ln_final``, ``text_projection``).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["CLIPTextEncoder"]


class CLIPTextEncoder(nn.Module):
    """tokens (B, L) long -> text features (B, E), not normalised; or embeddings (B, L, d) + EOT index (B,)."""

    def __init__(self, clip: nn.Module):
        """
        Args:
            clip: an ``open_clip.model.CLIP`` whose text modules are taken over (shared, not copied).
        """
        super().__init__()
        if getattr(clip, "text_pool_type", "argmax") != "argmax":
            raise ValueError(f"CLIPTextEncoder reads the EOT (argmax) token; this model pools by "
                             f"{clip.text_pool_type!r}")
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.context_length = int(self.positional_embedding.shape[0])
        self.width = int(self.positional_embedding.shape[1])
        proj = self.text_projection
        self.embed_dim = int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) -> token embeddings (B, L, d) (no positional embedding)."""
        return self.token_embedding(tokens)

    def forward_embeddings(self, embeddings: torch.Tensor, eot_index: torch.Tensor, *,
                           full_context: bool = False) -> torch.Tensor:
        """embeddings (B, L, d) (token embeddings, learned vectors spliced in), eot_index (B,) -> (B, E).

        Only the first ``max(eot_index) + 1`` positions are run: the tower is causal and reads the EOT token, so
        the padding after it never reaches the feature (the same values, at 12 / 77 of the cost for CLIP-ReID's
        prompt). ``full_context`` runs all L positions anyway (same feature), for modules inside the blocks
        that read every token, e.g. a load-balancing loss averaged over the padding too."""
        if embeddings.shape[1] != self.context_length:
            raise ValueError(f"text embeddings have {embeddings.shape[1]} positions, the tower takes "
                             f"{self.context_length}")
        eot_index = eot_index.to(embeddings.device).long()
        length = self.context_length if full_context else int(eot_index.max()) + 1
        x = embeddings[:, :length] + self.positional_embedding[:length].to(embeddings.dtype)
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index]
        proj = self.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def forward(self, tokens: torch.Tensor, *, full_context: bool = False) -> torch.Tensor:
        """tokens (B, L) long (EOT = the largest id of each row) -> (B, E); ``full_context``: see
        ``forward_embeddings``."""
        return self.forward_embeddings(self.embed(tokens), tokens.argmax(dim=-1), full_context=full_context)
