"""CLIP-ReID's identity prompts: "A photo of a X X X X person." with the X's replaced by learned token
embeddings, one set per identity (Li et al., AAAI 2023, stage 1)."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .text_encoder import CLIPTextEncoder
from .tokenizer import placeholder_positions, tokenize

__all__ = ["IdentityPromptLearner"]


class IdentityPromptLearner(nn.Module):
    """labels (B,) -> prompt embeddings (B, L, d) and EOT positions (B,) for ``CLIPTextEncoder.forward_embeddings``.

    Buffers ``token_prefix`` (1, p, d) and ``token_suffix`` (1, L - p - n, d) are the frozen token embeddings of
    the template around its n placeholders; ``cls_ctx`` (num_ids, n, d) are the learned ones (the official names,
    so official checkpoints load by key)."""

    def __init__(self, *, num_ids: int, text_encoder: CLIPTextEncoder, template: str = "A photo of a X X X X person.",
                 init_std: float = 0.02):
        """
        Args:
            num_ids: identities (one prompt each).
            text_encoder: supplies the token embedding table (read once, not kept) and the context length.
            template: the prompt; its placeholder word ``X`` marks the learned positions (contiguous).
            init_std: std of the normal initialisation of the learned tokens.
        """
        super().__init__()
        positions = placeholder_positions(template, "X", text_encoder.context_length)
        first, n = positions[0], len(positions)
        if positions != list(range(first, first + n)):
            raise ValueError(f"the placeholders of prompt {template!r} must be contiguous, found at {positions}")
        tokens = tokenize(template, text_encoder.context_length)  # (1, L)
        with torch.no_grad():
            embedding = text_encoder.embed(tokens.to(text_encoder.token_embedding.weight.device)).float()
        self.register_buffer("token_prefix", embedding[:, :first].clone())
        self.register_buffer("token_suffix", embedding[:, first + n:].clone())
        self.register_buffer("eot_position", tokens.argmax(dim=-1)[0].clone(), persistent=False)
        self.cls_ctx = nn.Parameter(torch.empty(num_ids, n, embedding.shape[-1]))
        nn.init.normal_(self.cls_ctx, std=init_std)
        self.template = template

    @property
    def num_ids(self) -> int:
        return int(self.cls_ctx.shape[0])

    def forward(self, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """labels (B,) long -> (embeddings (B, L, d), eot index (B,))."""
        ctx = self.cls_ctx[labels.long()]
        b = ctx.shape[0]
        prompts = torch.cat([self.token_prefix.expand(b, -1, -1).to(ctx.dtype), ctx,
                             self.token_suffix.expand(b, -1, -1).to(ctx.dtype)], dim=1)
        return prompts, self.eot_position.expand(b)

    def extra_repr(self) -> str:
        return f"num_ids={self.num_ids}, template={self.template!r}"
