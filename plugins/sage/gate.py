"""The SAGE gate: one scalar per expert per image per layer, from the expert residuals themselves.

For sample b and expert k (sage.md, stage 2):
    Omega_bk = Delta_bk with every token row L2-normalised over d_out   (N, d_out)
    e_bk     = <vec(Omega_bk), w>,   w in R^{N x d_out}, shared by the K experts, init 0
    g_b      = softmax_k(e_b / tau), tau a learnable scalar (init 1)
With w = 0 the gate is the uniform average (LoRA-Avg). Size: N * d_out per layer, independent of K
(+1 temperature). The temperature is used as ``max(tau, tau_min)``: nothing else keeps a learned tau positive, and
tau <= 0 would invert or break the softmax (the paper does not say how the authors prevent it).
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..layers.gated_lora import LowRankResiduals, Residuals


class SAGEGate(nn.Module):
    """Residuals Delta (B, K, N, d_out), dense or factored (:class:`LowRankResiduals`) -> gate weights g (B, K)."""

    def __init__(self, *, num_tokens: int, out_features: int, eps: float = 1e-6, tau_init: float = 1.0,
                 tau_min: float = 1e-2):
        """
        Args:
            num_tokens: N, tokens per sample (129 for ViT-B/16 at 256x128).
            out_features: d_out of the gated linear layer.
            eps: lower bound of the row norm in the L2 normalisation (``F.normalize``).
            tau_init: initial softmax temperature.
            tau_min: floor of the temperature used in the softmax (> 0).
        """
        if not 0 < tau_min <= tau_init:
            raise ValueError(f"need 0 < tau_min <= tau_init, got tau_min={tau_min}, tau_init={tau_init}")
        super().__init__()
        self.num_tokens = num_tokens
        self.out_features = out_features
        self.eps = eps
        self.tau_min = float(tau_min)
        self.weight = nn.Parameter(torch.zeros(num_tokens, out_features))  # w, shared across experts
        self.tau = nn.Parameter(torch.tensor(float(tau_init)))

    def logits(self, delta: Residuals) -> torch.Tensor:
        """Delta (B, K, N, d_out) -> e (B, K). Factored residuals give the same value without building Delta:
        ``e_bk = sum_n <Delta_bkn, w_n> / max(||Delta_bkn||, eps)``."""
        if tuple(delta.shape[2:]) != (self.num_tokens, self.out_features):
            raise ValueError(f"SAGEGate built for (N={self.num_tokens}, d_out={self.out_features}) residuals, "
                             f"got shape {tuple(delta.shape)}")
        if isinstance(delta, LowRankResiduals):
            return (delta.inner(self.weight) / delta.row_norms(self.eps)).sum(-1)
        omega = F.normalize(delta, p=2.0, dim=-1, eps=self.eps)
        return torch.einsum("bkno,no->bk", omega, self.weight)

    def forward(self, delta: Residuals) -> torch.Tensor:
        """Delta (B, K, N, d_out) -> g (B, K), rows sum to 1."""
        return torch.softmax(self.logits(delta) / self.tau.clamp(min=self.tau_min), dim=1)

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, out_features={self.out_features}"
