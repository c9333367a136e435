"""CLIP image tower (open_clip ``VisionTransformer``) with the outputs ReID methods read and an optional camera /
view embedding on the CLS token (CLIP-ReID's SIE).

The forward runs open_clip's own modules step by step (open_clip has no hook for a term added to the CLS token
before the positional embedding): patch conv -> CLS prepended -> [+ coef * camera embedding on CLS] ->
+ positional embedding -> patch dropout -> ``ln_pre`` -> blocks -> ``ln_post`` -> ``@ proj``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import torch
from torch import nn

__all__ = ["CLIPImageFeatures", "CLIPImageEncoder"]


@dataclass
class CLIPImageFeatures:
    """Outputs of :class:`CLIPImageEncoder` (B = batch, N = 1 + patches, D = width, E = embedding dim).

    cls_penultimate: (B, D) CLS after the second-to-last block (CLIP-ReID's ``x11``, a triplet input).
    cls_pre_ln: (B, D) CLS after the last block, before ``ln_post``.
    tokens: (B, N, D) every token after the last block and ``ln_post`` (CLIP-ReID's ``x12``).
    cls: (B, D) = tokens[:, 0].
    proj: (B, E) = cls @ proj (the CLIP image embedding, not normalised).
    blocks: {i: (B, N, D)} output of block i (0-based) for each index requested.
    """
    cls_penultimate: torch.Tensor
    cls_pre_ln: torch.Tensor
    tokens: torch.Tensor
    cls: torch.Tensor
    proj: torch.Tensor
    blocks: Dict[int, torch.Tensor] = field(default_factory=dict)


class CLIPImageEncoder(nn.Module):
    """images (B, 3, H, W) normalised [+ camids (B,), viewids (B,)] -> :class:`CLIPImageFeatures`.

    Parameters keep open_clip's names under ``visual.`` (so OpenAI / open_clip weights load by prefix);
    the SIE table is ``camera_embed`` (CLIP-ReID's ``cv_embed``).
    """

    def __init__(self, visual: nn.Module, *, num_cameras: int = 0, num_views: int = 0, sie_coef: float = 1.0):
        """
        Args:
            visual: an open_clip ``VisionTransformer`` (``CLIP.visual``) with a CLS token and ``proj``.
            num_cameras: > 0 adds a learnable embedding per camera id to the CLS token.
            num_views: > 0 adds one per view id (with cameras: one per (camera, view) pair, row
                ``camid * num_views + viewid``).
            sie_coef: the embedding's coefficient (CLIP-ReID's ``SIE_COE``).
        """
        super().__init__()
        if getattr(visual, "proj", None) is None or getattr(visual, "attn_pool", None) is not None:
            raise ValueError("CLIPImageEncoder needs an open_clip VisionTransformer with a CLS token and a "
                             "projection (no attentional pooling)")
        self.visual = visual
        self.width = int(visual.class_embedding.shape[0])
        self.embed_dim = int(visual.proj.shape[1])
        self.num_blocks = len(visual.transformer.resblocks)
        self.num_cameras, self.num_views, self.sie_coef = int(num_cameras), int(num_views), float(sie_coef)
        rows = max(self.num_cameras, 1) * max(self.num_views, 1) if (num_cameras or num_views) else 0
        self.sie_enabled = True  # switch the camera term off without dropping the table (e.g. a frozen-CLIP score)
        if rows:
            self.camera_embed = nn.Parameter(torch.zeros(rows, self.width))
            nn.init.trunc_normal_(self.camera_embed, std=0.02)
        else:
            self.register_parameter("camera_embed", None)

    @property
    def grid_size(self) -> Sequence[int]:
        return tuple(self.visual.grid_size)

    @property
    def uses_camids(self) -> bool:
        return self.camera_embed is not None

    def sie_rows(self, camids: Optional[torch.Tensor], viewids: Optional[torch.Tensor]) -> torch.Tensor:
        """Row of ``camera_embed`` per sample (B,); fails naming the id that is out of range."""
        def check(ids, n, what, key):
            if ids is None:
                raise ValueError(f"the SIE embedding is on ({key} > 0) but no {what} ids were given")
            ids = ids.long().to(self.camera_embed.device)
            if ids.numel() and (ids.min() < 0 or ids.max() >= n):
                raise ValueError(f"{what} id {int(ids.max() if ids.max() >= n else ids.min())} outside [0, {n}); "
                                 f"raise {key}")
            return ids
        if self.num_cameras and self.num_views:
            return (check(camids, self.num_cameras, "camera", "NUM_CAMERAS") * self.num_views
                    + check(viewids, self.num_views, "view", "NUM_VIEWS"))
        if self.num_cameras:
            return check(camids, self.num_cameras, "camera", "NUM_CAMERAS")
        return check(viewids, self.num_views, "view", "NUM_VIEWS")

    def forward(self, images: torch.Tensor, camids: Optional[torch.Tensor] = None,
                viewids: Optional[torch.Tensor] = None, *, use_sie: bool = True,
                return_blocks: Sequence[int] = ()) -> CLIPImageFeatures:
        """images (B, 3, H, W) -> features. ``use_sie=False`` skips the camera term (CLIP-ReID's stage-1 image
        features are taken without it); ``return_blocks``: 0-based indices of blocks whose outputs to keep."""
        v = self.visual
        x = v.conv1(images)  # (B, D, gh, gw)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, gh*gw, D)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        if use_sie and self.sie_enabled and self.camera_embed is not None:
            cls = cls + self.sie_coef * self.camera_embed[self.sie_rows(camids, viewids)].unsqueeze(1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)  # (B, N, D)
        x = x + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(v.patch_dropout(x))
        batch_first = getattr(v.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        keep = {int(i) % self.num_blocks for i in return_blocks}
        blocks, penultimate = {}, x
        for i, block in enumerate(v.transformer.resblocks):
            if i == self.num_blocks - 1:
                penultimate = x
            x = block(x)
            if i in keep:
                blocks[i] = x if batch_first else x.transpose(0, 1)
        if not batch_first:
            x, penultimate = x.transpose(0, 1), penultimate.transpose(0, 1)
        tokens = v.ln_post(x)
        return CLIPImageFeatures(cls_penultimate=penultimate[:, 0], cls_pre_ln=x[:, 0], tokens=tokens,
                                 cls=tokens[:, 0], proj=tokens[:, 0] @ v.proj, blocks=blocks)

    def extra_repr(self) -> str:
        return (f"grid={self.grid_size}, width={self.width}, embed_dim={self.embed_dim}, cameras={self.num_cameras}, "
                f"views={self.num_views}, sie_coef={self.sie_coef}")
