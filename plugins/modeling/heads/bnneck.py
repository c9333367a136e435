"""The BNNeck and bias-free classifier that the CLIP-based and distillation methods build their heads from."""
from __future__ import annotations

from torch import nn

__all__ = ["bnneck", "bias_free_classifier"]


def bnneck(dim: int) -> nn.BatchNorm1d:
    """BatchNorm1d (weight 1, bias 0) with the bias frozen: the BNNeck of "bag of tricks", as the official CLIP-ReID
    and DeMo code build it."""
    bn = nn.BatchNorm1d(dim)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    bn.bias.requires_grad_(False)
    return bn


def bias_free_classifier(dim: int, num_classes: int) -> nn.Linear:
    """Linear(dim -> num_classes) without bias, weights N(0, 0.001^2)."""
    layer = nn.Linear(dim, num_classes, bias=False)
    nn.init.normal_(layer.weight, std=0.001)
    return layer
