"""Distillation losses (LOSS_REGISTRY), generic: any student, any teacher. Each is a function (the maths) plus a
registered ``nn.Module`` (typed keywords; ``forward(student, teacher)`` -> scalar). The teacher tensors are
detached inside: gradients reach the student only.

=========================  ==============================================================================
``KDLoss``                 T^2 KL(softmax(z_t / T) || softmax(z_s / T)), batch mean (Hinton et al.); fast-reid's
                           ``Distiller._kldiv`` computes exactly this and is reused
``FeatureMSELoss``         mean over samples of ||F_s - F_t||_2^2 (FitNets-style feature alignment)
``AttentionTransferLoss``  sum over layer pairs j of mean_b || A_s/||A_s|| - A_t/||A_t|| ||_2, A = sum_c |F^c|
                           (Zagoruyko & Komodakis); maps of different sizes are resized to the student's grid
``GramRelationLoss``       || G_s/||G_s||_F - G_t/||G_t||_F ||_F^2 with G = F F^T (B x B sample relations)
=========================  ==============================================================================
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from fastreid.modeling.meta_arch.distiller import Distiller
from torch import nn

from ...registry import LOSS_REGISTRY

__all__ = ["kd_loss", "feature_mse_loss", "attention_map", "attention_transfer_loss", "gram_relation_loss",
           "KDLoss", "FeatureMSELoss", "AttentionTransferLoss", "GramRelationLoss"]

Maps = Union[torch.Tensor, Sequence[torch.Tensor]]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """(B, C) logits -> T^2 KL(p_t || p_s) summed over classes, averaged over the batch (0 when equal)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"KD needs logits of one shape, got student {tuple(student_logits.shape)} and teacher "
                         f"{tuple(teacher_logits.shape)} (same training identities?)")
    return Distiller._kldiv(student_logits, teacher_logits.detach(), float(temperature))


def feature_mse_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """(B, D) features -> (1/B) sum_i ||F_s(x_i) - F_t(x_i)||_2^2 (Eq. 10)."""
    if student.shape != teacher.shape:
        raise ValueError(f"feature distillation needs features of one shape, got {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}")
    return (student - teacher.detach()).pow(2).sum(dim=1).mean()


def attention_map(features: torch.Tensor, size=None, eps: float = 1e-12) -> torch.Tensor:
    """(B, C, H, W) activations (or (B, H, W) maps already summed over channels) -> (B, H*W) spatial attention
    A = sum_c |F^c|, resized bilinearly to ``size`` (H', W') when given, L2-normalised per sample."""
    a = features.abs().sum(dim=1) if features.dim() == 4 else features
    if a.dim() != 3:
        raise ValueError(f"attention_map takes (B, C, H, W) or (B, H, W), got {tuple(features.shape)}")
    if size is not None and tuple(a.shape[-2:]) != tuple(size):
        a = F.interpolate(a.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)
    return F.normalize(a.flatten(1), dim=1, eps=eps)


def attention_transfer_loss(student_maps: Maps, teacher_maps: Maps) -> torch.Tensor:
    """Eq. 11: sum over layer pairs j of the batch mean of || A_s_j/||A_s_j|| - A_t_j/||A_t_j|| ||_2; each
    teacher map is resized to its student map's grid."""
    s_list = [student_maps] if torch.is_tensor(student_maps) else list(student_maps)
    t_list = [teacher_maps] if torch.is_tensor(teacher_maps) else list(teacher_maps)
    if len(s_list) != len(t_list) or not s_list:
        raise ValueError(f"attention transfer pairs layers: {len(s_list)} student vs {len(t_list)} teacher maps")
    total = 0.0
    for s, t in zip(s_list, t_list):
        a_s = attention_map(s)
        a_t = attention_map(t.detach(), size=s.shape[-2:])
        total = total + (a_s - a_t).norm(dim=1).mean()
    return total


def _normalised_gram(features: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    g = features @ features.t()
    return g / g.norm(p="fro").clamp_min(eps)


def gram_relation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Eq. 12 on (B, D_s) and (B, D_t) features (the dims may differ): || G_s/||G_s||_F - G_t/||G_t||_F ||_F^2 with
    G = F F^T, the B x B matrix of sample relations (the paper's G = F^T F with samples as columns). Invariant to
    a scale of either feature."""
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"relational distillation needs one batch, got {student.shape[0]} and {teacher.shape[0]}")
    return (_normalised_gram(student) - _normalised_gram(teacher.detach())).pow(2).sum()


@LOSS_REGISTRY.register()
class KDLoss(nn.Module):
    """``forward(student_logits (B, C), teacher_logits (B, C))`` -> T^2 KL (see ``kd_loss``)."""

    def __init__(self, *, temperature: float = 4.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"KD temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return kd_loss(student_logits, teacher_logits, self.temperature)


@LOSS_REGISTRY.register()
class FeatureMSELoss(nn.Module):
    """``forward(student (B, D), teacher (B, D))`` -> mean squared L2 distance (see ``feature_mse_loss``)."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return feature_mse_loss(student, teacher)


@LOSS_REGISTRY.register()
class AttentionTransferLoss(nn.Module):
    """``forward(student_maps, teacher_maps)``: (B, C, H, W) tensors or equal-length lists of them (teacher maps
    may also be (B, H, W) channel sums) -> scalar (see ``attention_transfer_loss``)."""

    def forward(self, student_maps: Maps, teacher_maps: Maps) -> torch.Tensor:
        return attention_transfer_loss(student_maps, teacher_maps)


@LOSS_REGISTRY.register()
class GramRelationLoss(nn.Module):
    """``forward(student (B, D_s), teacher (B, D_t))`` -> normalised-Gram distance (see ``gram_relation_loss``)."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return gram_relation_loss(student, teacher)
