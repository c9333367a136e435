"""Supervised contrastive loss between two sets of features (Khosla et al., 2020), in the cross-modal form that
CLIP-ReID's stage 1 uses (image -> text and text -> image with the same labels)."""
from __future__ import annotations

import torch
from torch import nn

from ...registry import LOSS_REGISTRY

__all__ = ["supervised_contrastive_loss", "SupConLoss"]


def supervised_contrastive_loss(anchors: torch.Tensor, contrast: torch.Tensor, anchor_labels: torch.Tensor,
                                contrast_labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``-mean_a [ sum_{c: y_c = y_a} log softmax_c(a . c / T) / #{c: y_c = y_a} ]``.

    anchors (A, D), contrast (C, D), anchor_labels (A,), contrast_labels (C,); every anchor needs at least one
    positive among the contrast set. Features are used as given (CLIP-ReID does not normalise them)."""
    positives = (anchor_labels[:, None] == contrast_labels[None, :]).to(anchors.dtype)  # (A, C)
    count = positives.sum(1)
    if bool((count == 0).any()):
        raise ValueError("supervised_contrastive_loss: an anchor has no positive in the contrast set")
    logits = anchors @ contrast.t() / temperature
    log_prob = torch.log_softmax(logits, dim=1)
    return -((positives * log_prob).sum(1) / count).mean()


@LOSS_REGISTRY.register()
class SupConLoss(nn.Module):
    """``forward(anchors (A, D), contrast (C, D), anchor_labels (A,), contrast_labels (C,)) -> scalar``."""

    def __init__(self, *, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, anchors, contrast, anchor_labels, contrast_labels):
        return supervised_contrastive_loss(anchors, contrast, anchor_labels, contrast_labels, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
