"""LoRAHub on pseudo-labels: the objective batch covers every cluster first; the objective is repeatable even with
fast-reid's in-place input normalisation, and has the hand-computed value."""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from plugins.sage.lorahub_fit import centroid_objective, objective_indices


def test_objective_indices_round_robin_over_clusters():
    labels = np.array([0, 0, 0, 1, -1, 1, 2, -1, 0])
    idx = objective_indices(labels, 5, seed=0)
    assert len(idx) == 5 and len(set(idx.tolist())) == 5
    assert sorted(labels[idx[:3]].tolist()) == [0, 1, 2]  # one image of every cluster before any second one
    assert (labels[idx] >= 0).all()  # outliers never enter the objective
    assert len(objective_indices(labels, 100)) == 7  # capped by the pseudo-labelled images


class InPlaceNormalising(nn.Module):
    """Mimics fast-reid's Baseline: normalises batch["images"] in place, then a linear embedding."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 3, bias=False)

    def forward(self, batch):
        images = batch["images"]
        images.sub_(0.5).div_(2.0)
        return self.embed(images.flatten(1))


def test_centroid_objective_is_repeatable_and_hand_computed():
    torch.manual_seed(0)
    model = InPlaceNormalising()
    images = torch.rand(4, 1, 2, 2)
    targets = torch.tensor([0, 0, 1, 1])
    loss_fn = centroid_objective(model, {"images": images.clone()}, targets, temperature=0.5)
    first, second = float(loss_fn()), float(loss_fn())
    assert first == second
    f = F.normalize(model.embed(((images - 0.5) / 2.0).flatten(1)), dim=1)
    c = F.normalize(torch.stack([f[:2].sum(0), f[2:].sum(0)]), dim=1)
    logits = (f @ c.T / 0.5).tolist()
    expected = -sum(row[t] - math.log(sum(math.exp(v) for v in row)) for row, t in zip(logits, [0, 0, 1, 1])) / 4
    assert math.isclose(first, expected, rel_tol=1e-5)
