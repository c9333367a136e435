"""GatedLoRALinear: one batched forward equals the K experts computed separately and a per-sample weight merge."""
import pytest
import torch
from torch import nn

from plugins.layers.gated_lora import GatedLoRALinear, LowRankResiduals
from plugins.layers.low_rank import lora_residual
from plugins.routers.base import RouterOutput

K, R, D_IN, D_OUT, B, N = 3, 2, 6, 5, 4, 7


class FixedGate(nn.Module):
    """Test gate: weights that depend on the residuals (softmax of their means), to check the plumbing."""

    def forward(self, delta):
        dense = delta.dense() if isinstance(delta, LowRankResiduals) else delta
        return RouterOutput(torch.softmax(dense.mean(dim=(2, 3)) * 10.0, dim=1))


def _layer(gate=None, seed=0):
    torch.manual_seed(seed)
    base = nn.Linear(D_IN, D_OUT)
    a = [torch.randn(R, D_IN) for _ in range(K)]
    b = [torch.randn(D_OUT, R) for _ in range(K)]
    s = [0.5, 2.0, 4.0]
    return GatedLoRALinear(base, lora_A=a, lora_B=b, scaling=s, gate=gate), a, b, s


def test_single_forward_equals_separate_experts():
    layer, a, b, s = _layer(FixedGate())
    x = torch.randn(B, N, D_IN)
    separate = torch.stack([lora_residual(x, a[k], b[k], s[k]) for k in range(K)], dim=1)  # (B, K, N, D_OUT)
    assert torch.allclose(layer.expert_residuals(x).dense(), separate, atol=1e-5)
    g = FixedGate()(separate).weights
    expected = layer.base(x) + sum(g[:, k, None, None] * separate[:, k] for k in range(K))
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert torch.allclose(layer.last_gate_weights, g, atol=1e-6)


def test_residual_merge_equals_per_sample_weight_merge():
    layer, a, b, s = _layer(FixedGate(), seed=1)
    x = torch.randn(B, N, D_IN)
    y = layer(x)
    g = layer.last_gate_weights
    for i in range(B):
        w_i = layer.base.weight + sum(g[i, k] * s[k] * b[k] @ a[k] for k in range(K))
        assert torch.allclose(y[i], x[i] @ w_i.T + layer.base.bias, atol=1e-4)


def test_no_gate_is_uniform_average():
    layer, a, b, s = _layer(None, seed=2)
    x = torch.randn(B, N, D_IN)
    avg = sum(lora_residual(x, a[k], b[k], s[k]) for k in range(K)) / K
    assert torch.allclose(layer(x), layer.base(x) + avg, atol=1e-5)
    assert torch.allclose(layer.last_gate_weights, torch.full((B, K), 1.0 / K))


def test_everything_frozen_and_checks():
    layer, *_ = _layer(None)
    assert not any(p.requires_grad for p in layer.parameters())
    assert layer.lora_A.shape == (K, R, D_IN) and layer.lora_B.shape == (K, D_OUT, R)
    with pytest.raises(ValueError, match="one rank"):
        GatedLoRALinear(nn.Linear(D_IN, D_OUT), lora_A=[torch.zeros(2, D_IN), torch.zeros(3, D_IN)],
                        lora_B=[torch.zeros(D_OUT, 2), torch.zeros(D_OUT, 3)], scaling=[1.0, 1.0])
    with pytest.raises(ValueError, match="do not fit"):
        GatedLoRALinear(nn.Linear(D_IN, D_OUT), lora_A=[torch.zeros(2, D_IN + 1)],
                        lora_B=[torch.zeros(D_OUT, 2)], scaling=[1.0])
    with pytest.raises(ValueError, match="tokens"):
        layer(torch.randn(B, D_IN))
