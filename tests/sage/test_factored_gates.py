"""The gated merge at the cost of its rank: SAGE and MoLE gates on factored residuals (h = s A x and the stacked
B) equal today's formula on the dense residuals Delta (B, K, N, d_out) in outputs, gate weights and gradients
(float64), and a forward + backward of the layer never creates a (B, K, N, d_out) tensor."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from plugins.layers.gated_lora import GatedLoRALinear, LowRankResiduals
from plugins.sage.gate import SAGEGate
from plugins.sage.mole_gate import MoLEGate

DT = torch.float64


def _layer(kind: str, k: int, r: int, d_in: int, d_out: int, n: int, seed: int) -> GatedLoRALinear:
    g = torch.Generator().manual_seed(seed)
    base = nn.Linear(d_in, d_out).to(DT)
    a = [torch.randn(r, d_in, generator=g, dtype=DT) for _ in range(k)]
    b = [torch.randn(d_out, r, generator=g, dtype=DT) for _ in range(k)]
    gate = SAGEGate(num_tokens=n, out_features=d_out) if kind == "sage" else \
        MoLEGate(num_experts=k, num_tokens=n, out_features=d_out)
    layer = GatedLoRALinear(base, lora_A=a, lora_B=b, scaling=[0.5 + i for i in range(k)], gate=gate.to(DT))
    with torch.no_grad():  # a trained gate: non-zero w / P and tau != 1
        gate.weight.copy_(torch.randn(gate.weight.shape, generator=g, dtype=DT))
        gate.tau.fill_(0.7)
    return layer


def _dense_reference(layer: GatedLoRALinear, x: torch.Tensor):
    """Today's formula: materialise Delta, normalise its rows, gate, weighted sum."""
    delta = layer.expert_residuals(x).dense()  # (B, K, N, d_out)
    gate = layer.gate
    omega = F.normalize(delta, p=2.0, dim=-1, eps=gate.eps)
    if isinstance(gate, SAGEGate):
        e = torch.einsum("bkno,no->bk", omega, gate.weight)
        g = torch.softmax(e / gate.tau.clamp(min=gate.tau_min), dim=1)
    else:
        g = torch.softmax(F.linear(omega.flatten(1), gate.weight) / gate.tau, dim=1)
    return layer.base(x) + torch.einsum("bk,bkno->bno", g, delta), g


@pytest.mark.parametrize("kind", ["sage", "mole"])
@pytest.mark.parametrize("k", [1, 3, 10])
def test_factored_gate_equals_the_dense_formula(kind, k):
    g = torch.Generator().manual_seed(k)
    r, d_in, d_out, n, batch = [int(v) for v in torch.randint(2, 9, (5,), generator=g)]
    layer = _layer(kind, k, r, d_in, d_out, n, seed=k)
    x = torch.randn(batch, n, d_in, generator=g, dtype=DT)
    x[0, 0] = 0  # a zero row: the residual norm is clamped at eps in both formulas
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = layer(x1)
    weights = layer.last_gate_weights
    grads = torch.autograd.grad(y.square().sum(), [x1, layer.gate.weight, layer.gate.tau])
    y_ref, g_ref = _dense_reference(layer, x2)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), [x2, layer.gate.weight, layer.gate.tau])
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(weights, g_ref.detach(), rtol=1e-10, atol=1e-12)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_low_rank_residuals_algebra():
    g = torch.Generator().manual_seed(0)
    h, up = torch.randn(2, 4, 3, 5, generator=g, dtype=DT), torch.randn(3, 6, 5, generator=g, dtype=DT)  # (B, N, K, r)
    res = LowRankResiduals(h, up)
    dense = res.dense()
    assert res.shape == dense.shape == (2, 3, 4, 6)
    torch.testing.assert_close(res.row_norms(), dense.norm(dim=-1))
    w = torch.randn(4, 6, generator=g, dtype=DT)
    torch.testing.assert_close(res.inner(w), torch.einsum("bkno,no->bkn", dense, w))
    gw = torch.rand(2, 3, generator=g, dtype=DT)
    torch.testing.assert_close(res.combine(gw), torch.einsum("bk,bkno->bno", gw, dense))


class _Shapes(TorchDispatchMode):
    """Records the shape of every tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.shapes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor):
                self.shapes.add(tuple(t.shape))
        return out


@pytest.mark.parametrize("kind", ["sage", "mole"])
def test_no_dense_residual_tensor_is_created(kind):
    k, r, d_in, d_out, n, batch = 4, 3, 16, 24, 10, 5
    layer = _layer(kind, k, r, d_in, d_out, n, seed=1)
    x = torch.randn(batch, n, d_in, dtype=DT, requires_grad=True)
    with _Shapes() as seen:
        layer(x).sum().backward()
    dense = (batch, k, n, d_out)
    assert dense not in seen.shapes
    # nothing per sample, per expert and per output feature (MoLE's own weight is (K, K, N, d_out): no batch axis)
    assert not any(len(s) >= 4 and s[0] == batch and k in s[1:-1] and s[-1] == d_out for s in seen.shapes), \
        sorted(seen.shapes)
    assert (batch, n, k, r) in seen.shapes  # the factored activations are what the layer holds
