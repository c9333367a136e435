"""Backbones (BACKBONE_REGISTRY)."""
from . import clip  # noqa: F401  (build_clip_backbone)
from . import timm_vit  # noqa: F401
