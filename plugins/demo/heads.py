"""Training heads of DeMo: BNNeck (bias frozen) + bias-free classifier, and the loss of one supervised feature."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from fastreid.modeling.losses import triplet_loss
from torch import nn

from ..modeling.heads.bnneck import bias_free_classifier as classifier, bnneck

__all__ = ["bnneck", "classifier", "id_and_triplet"]


def id_and_triplet(feat: torch.Tensor, neck: nn.Module, cls: nn.Module, targets: torch.Tensor, *,
                   label_smooth: float, margin: float):
    """(label-smoothed CE of cls(neck(feat)), batch-hard triplet on feat) for feat (B, D); margin 0 = soft margin
    (softplus), as the official ``TripletLoss()`` without a margin."""
    ce = F.cross_entropy(cls(neck(feat)), targets, label_smoothing=label_smooth)
    return ce, triplet_loss(feat, targets, margin, False, True)
