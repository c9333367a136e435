"""Losses that fast-reid lacks (LOSS_REGISTRY): cross-modal and distillation losses."""
from .supcon import SupConLoss, supervised_contrastive_loss
from .sdm import SDMLoss, sdm_loss  # noqa: F401  (DM-Adapter's similarity distribution matching)
from .distillation import (AttentionTransferLoss, FeatureMSELoss, GramRelationLoss, KDLoss,  # noqa: F401
                           attention_map, attention_transfer_loss, feature_mse_loss, gram_relation_loss, kd_loss)

__all__ = ["SupConLoss", "supervised_contrastive_loss"]
