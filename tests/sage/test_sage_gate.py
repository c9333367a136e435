"""SAGE and MoLE gates (registered routers): hand-computed logits, w = 0 is LoRA-Avg, gradients reach only the gate."""
import math

import pytest
import torch
from torch import nn

from plugins.layers.gated_lora import GatedLoRALinear
from plugins.layers.lora import lora_residual
from plugins.sage.gate import SAGEGate
from plugins.sage.mole_gate import MoLEGate
from plugins.registry import ROUTER_REGISTRY
from plugins.routers import Router, RouterOutput


def test_sage_gate_hand_computed():
    gate = SAGEGate(num_tokens=2, out_features=2)
    with torch.no_grad():
        gate.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        gate.tau.fill_(0.5)
    # one sample, two experts; rows: expert 0 -> [3,4] (-> [.6,.8]), [0,0] (eps keeps it 0);
    # expert 1 -> [0,-2] (-> [0,-1]), [1,0] (-> [1,0])
    delta = torch.tensor([[[[3.0, 4.0], [0.0, 0.0]], [[0.0, -2.0], [1.0, 0.0]]]])
    e0 = 0.6 * 1.0 + 0.0  # <Omega_0, w>
    e1 = 0.0 + 0.0        # rows [0,-1].[1,0] + [1,0].[0,2]
    assert torch.allclose(gate.logits(delta), torch.tensor([[e0, e1]]))
    z = math.exp(e0 / 0.5) + math.exp(e1 / 0.5)
    assert torch.allclose(gate(delta).weights, torch.tensor([[math.exp(e0 / 0.5) / z, math.exp(e1 / 0.5) / z]]))


@pytest.mark.parametrize("tau", [0.0, -0.5, 1e-4])
def test_sage_gate_temperature_stays_positive(tau):
    """A learned tau at or below 0 would invert (or break) the softmax: the gate uses max(tau, tau_min)."""
    gate = SAGEGate(num_tokens=1, out_features=2, tau_min=0.25)
    with torch.no_grad():
        gate.weight.copy_(torch.tensor([[1.0, 0.0]]))
        gate.tau.fill_(tau)
    delta = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # logits e = [1, 0]
    g = gate(delta).weights
    z = math.exp(1 / 0.25) + 1.0
    assert torch.allclose(g, torch.tensor([[math.exp(1 / 0.25) / z, 1 / z]]))
    with pytest.raises(ValueError, match="tau_min"):
        SAGEGate(num_tokens=1, out_features=2, tau_min=0.0)


def test_sage_gate_shared_across_experts_and_size():
    gate = SAGEGate(num_tokens=5, out_features=7)
    assert gate.weight.shape == (5, 7) and torch.count_nonzero(gate.weight) == 0 and gate.tau.item() == 1.0
    with pytest.raises(ValueError, match="N=5"):
        gate(torch.randn(2, 3, 4, 7))


def test_zero_gate_equals_lora_avg_and_grads():
    torch.manual_seed(0)
    k, r, n, d_in, d_out = 4, 2, 5, 6, 3
    a = [torch.randn(r, d_in) for _ in range(k)]
    b = [torch.randn(d_out, r) for _ in range(k)]
    s = [1.0, 2.0, 0.5, 3.0]
    base = nn.Linear(d_in, d_out)
    layer = GatedLoRALinear(base, lora_A=a, lora_B=b, scaling=s,
                            gate=SAGEGate(num_tokens=n, out_features=d_out))
    x = torch.randn(3, n, d_in)
    avg = base(x) + sum(lora_residual(x, a[i], b[i], s[i]) for i in range(k)) / k
    y = layer(x)
    assert torch.allclose(y, avg, atol=1e-5)
    y.pow(2).sum().backward()
    trainable = {name for name, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"gate.weight", "gate.tau"}
    assert torch.count_nonzero(layer.gate.weight.grad) > 0
    # at w = 0 every logit is 0, so d loss / d tau = 0 exactly
    assert torch.isfinite(layer.gate.tau.grad) and layer.gate.tau.grad.abs() < 1e-6


def test_zero_residual_has_finite_gradients():
    gate = SAGEGate(num_tokens=3, out_features=4)
    delta = torch.zeros(2, 3, 3, 4, requires_grad=True)  # zero-initialised experts (B = 0)
    gate(delta).weights.sum().backward()
    assert torch.isfinite(delta.grad).all() and torch.isfinite(gate.weight.grad).all()


def test_mole_gate_hand_computed_and_size():
    k, n, d = 2, 1, 2
    gate = MoLEGate(num_experts=k, num_tokens=n, out_features=d)
    assert gate.weight.shape == (k, k * n * d) and torch.count_nonzero(gate.weight) == 0
    delta = torch.tensor([[[[3.0, 4.0]], [[0.0, 5.0]]]])  # -> [.6,.8], [0,1]; flat = [.6,.8,0,1]
    assert torch.allclose(gate(delta).weights, torch.full((1, 2), 0.5))
    with torch.no_grad():
        gate.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]]))
    assert torch.allclose(gate.logits(delta), torch.tensor([[0.6, 2.0]]))
    assert torch.allclose(gate(delta).weights, torch.softmax(torch.tensor([[0.6, 2.0]]), dim=1))
    with pytest.raises(ValueError, match="K=2"):
        gate(torch.randn(1, 3, 1, 2))


@pytest.mark.parametrize("name", ["SAGEGate", "MoLEGate"])
def test_gates_are_registered_routers_with_the_flattened_form(name):
    """Both gates are ROUTER_REGISTRY routers returning RouterOutput(weights (B, K), None); the per-sample flattened
    residuals (B, K*N*d_out), the registry's (B, d) form, give the same weights as the dense (B, K, N, d_out)."""
    torch.manual_seed(0)
    cls = ROUTER_REGISTRY.get(name)
    assert cls is {"SAGEGate": SAGEGate, "MoLEGate": MoLEGate}[name]
    gate = cls(num_experts=3, num_tokens=4, out_features=5)
    assert isinstance(gate, Router) and gate.num_experts == 3
    with torch.no_grad():
        gate.weight.normal_()
    delta = torch.randn(2, 3, 4, 5)
    out = gate(delta)
    assert isinstance(out, RouterOutput) and out.aux_loss is None and out.weights.shape == (2, 3)
    torch.testing.assert_close(out.weights.sum(1), torch.ones(2))
    torch.testing.assert_close(gate(delta.flatten(1)).weights, out.weights)
    assert not torch.allclose(out.weights, torch.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="K=3"):
        gate(torch.randn(2, 3 * 4 * 5 + 1))
    # checkpoint keys stay what stage-2 checkpoints hold
    assert sorted(gate.state_dict()) == ["tau", "weight"]


def test_sage_gate_checks_its_k_when_given():
    gate = SAGEGate(num_experts=2, num_tokens=1, out_features=2)
    with pytest.raises(RuntimeError, match="expected 2"):
        gate(torch.randn(1, 3, 1, 2))
    assert SAGEGate(num_tokens=1, out_features=2)(torch.randn(1, 3, 1, 2)).weights.shape == (1, 3)  # K open
