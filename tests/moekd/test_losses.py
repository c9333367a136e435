"""Known answers of the distillation losses (plugins/modeling/losses/distillation.py), worked by hand."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from plugins.modeling.losses import (AttentionTransferLoss, FeatureMSELoss, GramRelationLoss, KDLoss, attention_map,
                                     attention_transfer_loss, feature_mse_loss, gram_relation_loss, kd_loss)


def test_kd_is_zero_at_equal_logits_for_any_temperature():
    z = torch.randn(5, 7)
    for t in (1.0, 4.0, 16.0):
        assert kd_loss(z, z.clone(), t).item() == pytest.approx(0.0, abs=1e-5)  # float32 rounding x T^2


def test_kd_hand_example():
    # one sample, two classes, T = 1: teacher p = (0.5, 0.5), student logits (log 3, 0) -> q = (0.75, 0.25)
    # KL(p || q) = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.5 ln(4/3); times T^2 = 1
    s, t = torch.tensor([[math.log(3.0), 0.0]]), torch.zeros(1, 2)
    assert kd_loss(s, t, 1.0).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    # T = 4: logits / 4, times 16
    q = F.softmax(s / 4, dim=1)[0]
    want = 16 * (0.5 * math.log(0.5 / q[0].item()) + 0.5 * math.log(0.5 / q[1].item()))
    assert KDLoss(temperature=4.0)(s, t).item() == pytest.approx(want, rel=1e-6)


def test_kd_is_a_batch_mean_and_only_the_student_gets_gradient():
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4, requires_grad=True)
    per_sample = torch.stack([kd_loss(s[i:i + 1], t[i:i + 1], 4.0) for i in range(3)])
    loss = kd_loss(s, t, 4.0)
    assert loss.item() == pytest.approx(per_sample.mean().item(), rel=1e-6)
    loss.backward()
    assert s.grad is not None and t.grad is None


def test_kd_refuses_other_class_counts():
    with pytest.raises(ValueError, match="same training identities"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_feature_mse_hand_example():
    s = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    t = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    # (1 + 4 + 9 + 16) / 2 samples
    assert feature_mse_loss(s, t).item() == pytest.approx(15.0)
    assert FeatureMSELoss()(s, s).item() == 0.0


def test_attention_maps_are_unit_norm_channel_sums():
    f = torch.zeros(1, 2, 2, 2)
    f[0, 0] = torch.tensor([[1.0, -2.0], [0.0, 0.0]])
    f[0, 1] = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    a = attention_map(f)  # |.| summed: [[2, 2], [0, 2]] -> / sqrt(12)
    assert torch.allclose(a, torch.tensor([[2.0, 2.0, 0.0, 2.0]]) / math.sqrt(12.0))
    assert torch.allclose(attention_map(torch.randn(3, 5, 4, 2)).norm(dim=1), torch.ones(3))
    # a (B, H, W) map of another size is resized to the requested grid, then normalised
    assert attention_map(torch.rand(2, 8, 4), size=(4, 2)).shape == (2, 8)


def test_attention_transfer_hand_example_and_invariances():
    s = torch.zeros(1, 1, 1, 2)
    s[0, 0, 0] = torch.tensor([1.0, 0.0])
    t = torch.zeros(1, 3, 1, 2)
    t[0, :, 0] = torch.tensor([0.0, 5.0])
    # unit maps (1, 0) and (0, 1): distance sqrt(2)
    assert attention_transfer_loss(s, t).item() == pytest.approx(math.sqrt(2.0), rel=1e-6)
    x = torch.randn(2, 4, 4, 2)
    assert attention_transfer_loss(x, 7.0 * x).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert attention_transfer_loss(x, -x).item() == pytest.approx(0.0, abs=1e-6)  # |F| ignores the sign
    # two layer pairs sum; a teacher map on a finer grid (8x4) is resized to the student's (4x2)
    fine = x.abs().sum(1, keepdim=True).repeat_interleave(2, 2).repeat_interleave(2, 3)
    loss = AttentionTransferLoss()([x, x], [fine.squeeze(1), x])
    assert loss.item() == pytest.approx(0.0, abs=1e-5)


def test_gram_loss_is_invariant_to_feature_scale_and_zero_on_equal_relations():
    f = torch.randn(6, 16)
    assert gram_relation_loss(f, 3.5 * f).item() == pytest.approx(0.0, abs=1e-6)
    # another width, same sample relations: an orthogonal map keeps F F^T
    q, _ = torch.linalg.qr(torch.randn(32, 32))
    g = torch.cat([f, torch.zeros(6, 16)], dim=1) @ q
    assert GramRelationLoss()(f, g).item() == pytest.approx(0.0, abs=1e-5)


def test_gram_loss_hand_example():
    s = torch.eye(2)  # G_s = I, ||I||_F = sqrt(2)
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # G_t = all ones, ||.||_F = 2
    want = ((1 / math.sqrt(2) - 0.5) ** 2) * 2 + (0.5 ** 2) * 2
    assert gram_relation_loss(s, t).item() == pytest.approx(want, rel=1e-6)
