"""The visual encoder DeMo shares across R, N and T, as a token encoder:
normalised images (B, 3, H, W) + camera ids (B,) -> tokens (B, 1 + N, C), CLS first.

- ``CLIPTokenEncoder``: the project's open_clip image tower (``CLIPImageEncoder``): camera embedding
  ``coef * cv_embed[cam]`` on the CLASS TOKEN only, before the positional embedding and ``ln_pre`` (as the
  official code); ``ln_post`` and ``@ proj`` on ALL tokens, so CLS and patches are C = embed dim (512 for
  ViT-B/16).
- ``TimmTokenEncoder``: a timm ImageNet ViT (``TimmViTBackbone``, the paper's ViT-B/16 variant): TransReID's SIE
  on every token after the positional embedding; the final norm on all tokens, no projection (C = width).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..modeling.backbones.clip import CLIPImageEncoder
from ..modeling.backbones.timm_vit import TimmViTBackbone

__all__ = ["CLIPTokenEncoder", "TimmTokenEncoder"]


class CLIPTokenEncoder(nn.Module):
    """images (B, 3, H, W) normalised [+ camids (B,)] -> projected tokens (B, 1 + N, E)."""

    def __init__(self, tower: CLIPImageEncoder):
        super().__init__()
        self.tower = tower
        self.dim = tower.embed_dim

    @property
    def camera_parameters(self):
        """The camera embedding (learned at the new modules' rate), or nothing."""
        return [self.tower.camera_embed] if self.tower.camera_embed is not None else []

    def forward(self, images: torch.Tensor, camids: Optional[torch.Tensor] = None) -> torch.Tensor:
        tokens = self.tower(images, camids if self.tower.uses_camids else None).tokens  # after ln_post
        return tokens @ self.tower.visual.proj


class TimmTokenEncoder(nn.Module):
    """images (B, 3, H, W) normalised [+ camids (B,)] -> final-norm tokens (B, 1 + N, D)."""

    def __init__(self, backbone: TimmViTBackbone):
        super().__init__()
        self.backbone = backbone
        self.dim = int(backbone.num_features)

    @property
    def camera_parameters(self):
        return [self.backbone.sie_embed] if self.backbone.sie_embed is not None else []

    def forward(self, images: torch.Tensor, camids: Optional[torch.Tensor] = None) -> torch.Tensor:
        b = self.backbone
        v = b.vit
        h = v._pos_embed(v.patch_embed(images))
        if b.sie_embed is not None:
            if camids is None:
                raise ValueError("the SIE camera embedding is on but no camera ids were given")
            camids = camids.long().to(images.device)
            if camids.numel() and (camids.min() < 0 or camids.max() >= b.num_cameras):
                raise ValueError(f"camera id {int(camids.max())} outside [0, {b.num_cameras}); raise "
                                 f"MODEL.BACKBONE.TIMM_VIT.NUM_CAMERAS")
            h = h + b.sie_coef * b.sie_embed[camids]
        h = v.norm_pre(v.patch_drop(h))
        return v.norm(v.blocks(h))
