"""Losses that fast-reid lacks (LOSS_REGISTRY): cross-modal and distillation losses."""
from .supcon import SupConLoss, supervised_contrastive_loss

__all__ = ["SupConLoss", "supervised_contrastive_loss"]
