"""SupCon on a hand example (CLIP-ReID's stage-1 loss, temperature 1)."""
import math

import pytest
import torch

from plugins.modeling.losses import SupConLoss, supervised_contrastive_loss


def test_hand_example():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    contrast = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # each anchor: logits {1, 0, 1} (or {0, 1, 1}); positives' log-softmax average to 1 - log(1 + 2e)
    loss = supervised_contrastive_loss(anchors, contrast, torch.tensor([0, 1]), torch.tensor([0, 1, 0]))
    assert loss.item() == pytest.approx(math.log(1 + 2 * math.e) - 1, abs=1e-6)
    # temperature divides the logits
    half = SupConLoss(temperature=0.5)(anchors, contrast, torch.tensor([0, 1]), torch.tensor([0, 1, 0]))
    assert half.item() == pytest.approx(math.log(1 + 2 * math.e ** 2) - 2, abs=1e-6)


def test_no_positive_is_an_error():
    with pytest.raises(ValueError, match="no positive"):
        supervised_contrastive_loss(torch.ones(1, 2), torch.ones(1, 2), torch.tensor([0]), torch.tensor([1]))
