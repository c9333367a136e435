"""MoSAIC's experts: per transformer block, one rank-r LoRA-style map per attribute expert, reduced to ONE token,
the active experts' tokens pooled into a summary token added after the block's FFN (paper Sec. 3.2-3.4).

Why our own module and not peft: a peft LoRA adapts a layer's weight (``W + BA``) for every token; a MoSAIC expert
is not a weight delta of any CLIP layer: it maps the block's token sequence to one extra token, selected per sample
by the router, and only its sum over active experts is added. Nothing of peft's wrapping or merging applies.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import List, Optional

import torch
from torch import nn

from ..modeling.backbones.clip import CLIPImageEncoder

__all__ = ["TOKEN_POOLS", "EXPERT_POOLS", "ADD_TO", "AttributeExpertBank", "ExpertFFN", "install_experts"]

TOKEN_POOLS = ("mean", "cls")  # one token per expert: mean over the block's tokens, or the CLS token
EXPERT_POOLS = ("mean", "max")  # active experts' tokens -> the summary token
ADD_TO = ("all", "cls")  # the summary token is added to every token, or to the CLS token only


class AttributeExpertBank(nn.Module):
    """E experts of one block. tokens (B, N, D) + active (B, E) bool -> summary token (B, D).

    Expert e maps the tokens with ``scaling * B_e A_e`` (A_e: r x D, B_e: D x r) and pools them to one token. The
    map is linear, so it commutes with mean pooling: ``mean_n(B A x_n) = B A mean_n(x_n)``; each expert therefore
    maps one pooled (B, D) vector instead of N tokens (same result, N times fewer FLOPs). A sample with no active
    expert gets an exact zero summary (the block is left as CLIP made it).
    """

    def __init__(self, *, num_experts: int, width: int, rank: int = 16, alpha: float = 16.0,
                 token_pool: str = "mean", expert_pool: str = "mean"):
        """
        Args:
            num_experts: E (the schema's expert count).
            width: D, the transformer width.
            rank: r of every expert (paper: 16).
            alpha: LoRA scaling numerator (scaling = alpha / rank).
            token_pool: "mean" over the tokens, or "cls" (the CLS token), per expert.
            expert_pool: "mean" or "max" over the active experts' tokens.
        """
        super().__init__()
        if token_pool not in TOKEN_POOLS:
            raise ValueError(f"MOSAIC.TOKEN_POOL must be one of {TOKEN_POOLS}, got {token_pool!r}")
        if expert_pool not in EXPERT_POOLS:
            raise ValueError(f"MOSAIC.EXPERT_POOL must be one of {EXPERT_POOLS}, got {expert_pool!r}")
        if int(num_experts) <= 0 or int(rank) <= 0:
            raise ValueError(f"an expert bank needs num_experts > 0 and rank > 0, got {num_experts}, {rank}")
        self.num_experts, self.width, self.rank = int(num_experts), int(width), int(rank)
        self.scaling = float(alpha) / self.rank
        self.token_pool, self.expert_pool = token_pool, expert_pool
        self.lora_A = nn.Parameter(torch.empty(self.num_experts, self.rank, self.width))
        self.lora_B = nn.Parameter(torch.zeros(self.num_experts, self.width, self.rank))
        for a in self.lora_A:  # LoRA's init: A as nn.Linear's default (Kaiming-uniform), B zero -> experts add 0
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.active: Optional[torch.Tensor] = None  # (B, E) bool, set by ``routing`` around each forward

    def expert_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, D) -> every expert's token (B, E, D)."""
        pooled = tokens.mean(1) if self.token_pool == "mean" else tokens[:, 0]
        hidden = torch.einsum("bd,erd->ber", pooled, self.lora_A.to(pooled.dtype))
        return torch.einsum("ber,edr->bed", hidden, self.lora_B.to(pooled.dtype)) * self.scaling

    def forward(self, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        if active.shape != (tokens.shape[0], self.num_experts):
            raise ValueError(f"active experts must be (B={tokens.shape[0]}, E={self.num_experts}), got "
                             f"{tuple(active.shape)}")
        active = active.to(tokens.device, torch.bool)
        out = self.expert_tokens(tokens)  # (B, E, D)
        count = active.sum(1, keepdim=True)  # (B, 1)
        if self.expert_pool == "mean":
            summary = (out * active.unsqueeze(-1).to(out.dtype)).sum(1) / count.clamp(min=1).to(out.dtype)
        else:
            summary = out.masked_fill(~active.unsqueeze(-1), float("-inf")).amax(1)
            summary = torch.where(count > 0, summary, torch.zeros_like(summary))
        return summary

    def extra_repr(self) -> str:
        return (f"experts={self.num_experts}, width={self.width}, rank={self.rank}, scaling={self.scaling:g}, "
                f"token_pool={self.token_pool}, expert_pool={self.expert_pool}")


class ExpertFFN(nn.Sequential):
    """A CLIP block's FFN (``c_fc``, ``gelu``, ``c_proj``, same parameter names) plus the block's expert bank.

    ``forward(z)`` with z = ``ln_2(h)``, the FFN input, returns ``FFN(z) + summary`` (broadcast over the tokens or
    CLS only), so the block computes ``h + FFN(ln_2(h)) + summary``: the summary token added residually after the
    FFN, from the tokens the FFN reads. CLIP's blocks have no layer scale, so nothing rescales the summary.
    Keeping the FFN's children under their own names lets CLIP / CLIP-ReID checkpoints load unchanged.
    """

    def __init__(self, mlp: nn.Sequential, experts: AttributeExpertBank, *, add_to: str = "all",
                 batch_first: bool = True):
        super().__init__(OrderedDict(mlp.named_children()))
        if add_to not in ADD_TO:
            raise ValueError(f"MOSAIC.ADD_TO must be one of {ADD_TO}, got {add_to!r}")
        self.experts = experts
        self.add_to, self.batch_first = add_to, bool(batch_first)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = z
        for name, module in self._modules.items():
            if name != "experts":
                y = module(y)
        active = self.experts.active
        if active is None:
            raise RuntimeError("a MoSAIC block ran outside MoSAIC routing: call the model (MoSAIC.encode), or wrap "
                               "the image tower call in `with model.routing(active):`")
        tokens = z if self.batch_first else z.transpose(0, 1)  # (B, N, D)
        summary = self.experts(tokens, active)  # (B, D)
        if self.add_to == "all":
            extra = summary.unsqueeze(1).expand_as(tokens)
        else:
            extra = torch.zeros_like(tokens)
            extra[:, 0] = summary
        return y + (extra if self.batch_first else extra.transpose(0, 1))


def install_experts(encoder: CLIPImageEncoder, *, num_experts: int, last_k: int, rank: int = 16,
                    alpha: float = 16.0, token_pool: str = "mean", expert_pool: str = "mean",
                    add_to: str = "all") -> List[AttributeExpertBank]:
    """Replace the FFN of each of the last ``last_k`` blocks of ``encoder`` by an ``ExpertFFN``; returns the banks
    (first to last block). The CLIP parameters keep their names; the banks are ``...resblocks.<i>.mlp.experts``."""
    blocks = encoder.visual.transformer.resblocks
    if not 1 <= int(last_k) <= len(blocks):
        raise ValueError(f"MOSAIC.LAST_K must be in 1..{len(blocks)} (the tower's blocks), got {last_k}")
    batch_first = getattr(encoder.visual.transformer, "batch_first", True)
    banks = []
    for i in range(len(blocks) - int(last_k), len(blocks)):
        block = blocks[i]
        if not isinstance(getattr(block, "ls_2", nn.Identity()), nn.Identity):
            raise ValueError(f"block {i} has a layer scale after its FFN; MoSAIC's summary token assumes none (CLIP)")
        bank = AttributeExpertBank(num_experts=num_experts, width=encoder.width, rank=rank, alpha=alpha,
                                   token_pool=token_pool, expert_pool=expert_pool)
        block.mlp = ExpertFFN(block.mlp, bank, add_to=add_to, batch_first=batch_first)
        banks.append(bank)
    return banks
