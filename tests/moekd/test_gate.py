"""The top-1 gate (Eq. 7-9): renormalisation, temperatures switching with train/eval, gradients."""
from __future__ import annotations

import pytest
import torch

from plugins.moekd.gate import ImageGateStem, TopOneGate


def _gate(**kw) -> TopOneGate:
    torch.manual_seed(0)
    return TopOneGate(in_dim=8, num_experts=2, hidden=(16, 8), **kw)


def test_paper_shapes():
    g = TopOneGate(in_dim=4096)
    dims = [(m.in_features, m.out_features) for m in g.mlp if isinstance(m, torch.nn.Linear)]
    assert dims == [(4096, 512), (512, 256), (256, 2)]
    assert (g.tau_train, g.tau_test) == (1.0, 0.5)


def test_top1_renormalised_weights_are_one_hot_on_the_argmax():
    g = _gate()
    x = torch.randn(32, 8)
    d = g.decide(x)
    assert torch.equal(d.weights, torch.nn.functional.one_hot(d.probs.argmax(1), 2).float())
    assert torch.equal(d.choice, d.probs.argmax(1))
    assert torch.allclose(d.probs.sum(1), torch.ones(32))


def test_temperature_follows_train_and_eval():
    g = _gate(tau_train=1.0, tau_test=0.5)
    x = torch.randn(16, 8)
    logits = g.mlp(x)
    g.train()
    assert g.tau == 1.0 and torch.allclose(g.decide(x).probs, torch.softmax(logits, 1), atol=1e-6)
    g.eval()
    assert g.tau == 0.5 and torch.allclose(g.decide(x).probs, torch.softmax(logits / 0.5, 1), atol=1e-6)
    g.train()
    assert g.tau == 1.0
    # sharper at test, same choice
    g.eval()
    sharp = g.decide(x).probs.max(1).values
    g.train()
    soft = g.decide(x).probs.max(1).values
    assert (sharp >= soft - 1e-7).all()


def test_straight_through_gives_the_gate_a_gradient():
    g = _gate()
    x = torch.randn(8, 8, requires_grad=True)
    f = torch.randn(8, 2, 4)
    out = (g.decide(x).weights.unsqueeze(-1) * f).sum()
    out.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())
    # without it, Eq. 9's one-hot weights are constants: no gradient reaches the gate
    plain = g.decide(x.detach())
    hard = torch.nn.functional.one_hot(plain.choice, 2).float()
    assert not hard.requires_grad


def test_soft_mode_returns_the_softmax():
    g = _gate(straight_through=False)
    x = torch.randn(4, 8)
    d = g.decide(x)
    assert torch.equal(d.weights, d.probs)


def test_router_contract_and_bad_temperatures():
    g = _gate()
    out = g(torch.randn(3, 8))
    assert out.weights.shape == (3, 2) and out.aux_loss is None
    with pytest.raises(ValueError, match="temperatures"):
        TopOneGate(in_dim=4, tau_test=0.0)


def test_image_stem_shape():
    stem = ImageGateStem(size=(32, 32), width=16)
    assert stem(torch.randn(2, 3, 128, 64)).shape == (2, 16)
