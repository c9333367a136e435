"""SoftmaxTopKRouter: known answers for the selection, the renormalised weights and the load-balancing loss."""
import math

import pytest
import torch

from plugins.routers.top_k import SoftmaxTopKRouter, load_balancing_loss


def test_top2_of_known_logits():
    router = SoftmaxTopKRouter(dim=3, num_experts=3, top_k=2)
    with torch.no_grad():
        router.gate.weight.copy_(torch.eye(3))
    out = router(torch.tensor([[2.0, 1.0, 0.0]]))
    e = 1 / (1 + math.exp(-1))  # softmax of (2, 1) -> sigmoid(1), 1 - sigmoid(1)
    assert out.weights.tolist()[0] == pytest.approx([e, 1 - e, 0.0])
    assert out.weights[0, 2].item() == 0.0


def test_uniform_logits_give_k_over_k():
    probs = torch.full((10, 4), 0.25)
    selected = torch.zeros(10, 4)
    selected[:, :2] = 1
    assert load_balancing_loss(probs, selected).item() == pytest.approx(2 / 4)
    # DM-Adapter's sum over 24 blocks x 0.5 of the uniform case with 6 experts / top-2: 24 * 0.5 * 2/6 = 4
    p6, s6 = torch.full((5, 6), 1 / 6), torch.zeros(5, 6)
    s6[:, :2] = 1
    assert 24 * 0.5 * load_balancing_loss(p6, s6).item() == pytest.approx(4.0)


def test_bad_top_k():
    with pytest.raises(ValueError, match="top_k"):
        SoftmaxTopKRouter(dim=4, num_experts=2, top_k=3)
