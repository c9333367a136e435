"""Backbones (BACKBONE_REGISTRY)."""
from . import timm_vit  # noqa: F401
