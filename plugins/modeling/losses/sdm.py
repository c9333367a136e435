"""Similarity distribution matching (SDM, Jiang & Ye, IRRA, CVPR 2023): KL between the softmax of the scaled
cosine similarities of a batch and the normalised identity-match distribution, image->text plus text->image.

    y_ij = 1[pid_i == pid_j],   q_ij = y_ij / sum_k y_ik,   s_ij = cos(v_i, t_j) / tau
    L = mean_i sum_j softmax_j(s_ij) * (log_softmax_j(s_ij) - log(q_ij + eps))   +   the same with s^T
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...registry import LOSS_REGISTRY

__all__ = ["SDMLoss", "sdm_loss"]


def _kl_rows(logits: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    return (F.softmax(logits, dim=1) * (F.log_softmax(logits, dim=1) - torch.log(target + eps))).sum(1).mean()


def sdm_loss(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor, *,
             temperature: float = 0.02, eps: float = 1e-8) -> torch.Tensor:
    """image_features (B, E), text_features (B, E) (row i of both is pair i), labels (B,) -> scalar."""
    if image_features.shape != text_features.shape or image_features.dim() != 2:
        raise ValueError(f"SDM needs paired (B, E) features, got {tuple(image_features.shape)} and "
                         f"{tuple(text_features.shape)}")
    labels = labels.reshape(-1, 1).to(image_features.device)
    match = (labels == labels.t()).to(image_features.dtype)  # (B, B), symmetric
    target = match / match.sum(dim=1, keepdim=True)
    v = F.normalize(image_features, dim=1)
    t = F.normalize(text_features, dim=1)
    i2t = v @ t.t() / temperature
    return _kl_rows(i2t, target, eps) + _kl_rows(i2t.t(), target, eps)


@LOSS_REGISTRY.register()
class SDMLoss(nn.Module):
    """``forward(image_features (B, E), text_features (B, E), labels (B,))`` -> scalar (see ``sdm_loss``)."""

    def __init__(self, *, temperature: float = 0.02, eps: float = 1e-8):
        """
        Args:
            temperature: tau; IRRA / DM-Adapter fix it at 0.02 (logit scale 50).
            eps: added to the target distribution inside the log.
        """
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"SDM temperature must be > 0, got {temperature}")
        self.temperature, self.eps = float(temperature), float(eps)

    def forward(self, image_features, text_features, labels):
        return sdm_loss(image_features, text_features, labels, temperature=self.temperature, eps=self.eps)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
