"""The MoE-KD gate (paper Eq. 7-9): an MLP on the gate input -> K logits h(x); temperature softmax
g_i = softmax(h / tau)_i with tau = tau_train in training and tau_test in eval; top-1 sparse gating with
renormalisation g'_i = g_i / sum_{j in top-1} g_j for the selected expert (= 1 exactly), 0 for the others.

Gradient: with g' one-hot, Eq. 9 alone gives the gate no gradient (the renormalised top-1 weight is the constant
1). The forward value is Eq. 9 exactly; the backward pass is the straight-through estimator
g' + g - stopgrad(g), i.e. the softmax's gradient (``straight_through=True``, default). ``False`` trains and
evaluates with the soft mixture g instead (a dense mixture; top-1 still reported).

Two gate inputs (``MOEKD.GATE.INPUT``): "experts" is the paper's: the concatenated adapted features of both
experts (4096-d), so BOTH experts must run before the gate can choose; "image" reads a small conv stem on a
downsampled image (``ImageGateStem``), so at inference only the chosen expert runs per sample.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import ROUTER_REGISTRY
from ..routers import Router, RouterOutput

__all__ = ["GateDecision", "TopOneGate", "ImageGateStem"]


class GateDecision(NamedTuple):
    """weights (B, K): Eq. 9 (one-hot forward, straight-through gradient); probs (B, K): Eq. 8 at the current
    temperature; choice (B,): the selected expert; logits (B, K): h(x)."""
    weights: torch.Tensor
    probs: torch.Tensor
    choice: torch.Tensor
    logits: torch.Tensor


@ROUTER_REGISTRY.register()
class TopOneGate(Router):
    """inputs (B, in_dim) -> top-1 renormalised expert weights (B, K) (see the module docstring)."""

    def __init__(self, *, in_dim: int, num_experts: int = 2, hidden: Sequence[int] = (512, 256),
                 tau_train: float = 1.0, tau_test: float = 0.5, straight_through: bool = True):
        """
        Args:
            in_dim: gate input width (4096 = 2 x 2048 adapted expert features in the paper).
            num_experts: K (2: CLIP, ALIGN).
            hidden: widths of the hidden FC layers (W_1: in_dim -> 512, W_2: 512 -> 256; W_3: 256 -> K).
            tau_train / tau_test: softmax temperatures in training / eval (Eq. 8).
            straight_through: one-hot forward with the softmax's gradient; False: the soft mixture.
        """
        super().__init__(num_experts=num_experts)
        if tau_train <= 0 or tau_test <= 0:
            raise ValueError(f"gate temperatures must be > 0, got tau_train {tau_train}, tau_test {tau_test}")
        layers, width = [], int(in_dim)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU(inplace=True)]
            width = int(h)
        layers.append(nn.Linear(width, self.num_experts))
        self.mlp = nn.Sequential(*layers)
        self.in_dim = int(in_dim)
        self.tau_train, self.tau_test = float(tau_train), float(tau_test)
        self.straight_through = bool(straight_through)

    @property
    def tau(self) -> float:
        """The temperature in use: tau_train in training mode, tau_test in eval mode."""
        return self.tau_train if self.training else self.tau_test

    def decide(self, inputs: torch.Tensor) -> GateDecision:
        logits = self.mlp(inputs)
        probs = F.softmax(logits / self.tau, dim=-1)  # Eq. 8
        choice = probs.argmax(dim=-1)
        top = probs.gather(-1, choice.unsqueeze(-1))
        hard = torch.zeros_like(probs).scatter(-1, choice.unsqueeze(-1), top / top)  # Eq. 9: g_i / sum_top1 g_j
        if self.straight_through:
            weights = hard + (probs - probs.detach())  # exactly Eq. 9 in value (p - p == 0)
        else:
            weights = probs
        return GateDecision(weights=weights, probs=probs, choice=choice, logits=logits)

    def route(self, inputs: torch.Tensor, **context) -> RouterOutput:
        return RouterOutput(self.decide(inputs).weights, None)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, in_dim={self.in_dim}, tau_train={self.tau_train}, tau_test={self.tau_test}, "
                f"straight_through={self.straight_through}")


class ImageGateStem(nn.Module):
    """Normalised images (B, 3, H, W) -> (B, width) gate input that costs a few MFLOPs: bilinear downsampling to
    ``size`` then three stride-2 3x3 convs (ReLU) and global average pooling."""

    def __init__(self, *, size: Sequence[int] = (64, 64), width: int = 128):
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        c = [3, width // 4, width // 2, width]
        self.convs = nn.Sequential(*[m for i in range(3) for m in
                                     (nn.Conv2d(c[i], c[i + 1], 3, stride=2, padding=1), nn.ReLU(inplace=True))])
        self.out_dim = int(width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=self.size, mode="bilinear", align_corners=False)
        return self.convs(x).mean(dim=(2, 3))
