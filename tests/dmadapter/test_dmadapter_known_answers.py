"""Known answers of DM-Adapter's parts: the domain-aware router's top-2 weights and load-balancing loss on a
hand-made routing, the sparse mixture against a dense sum, SDM on a 2x2 example, the caption-masking rule."""
from __future__ import annotations

import math

import pytest
import torch

from plugins.dmadapter.domain_router import DomainAwareRouter
from plugins.dmadapter.masking import MASK_TOKEN_ID, mask_caption_tokens
from plugins.layers.adapter import BottleneckAdapter
from plugins.layers.moe import SparseMixture
from plugins.modeling.losses.sdm import SDMLoss

from dmadapter_models import captions_batch


def _router(alpha: float) -> DomainAwareRouter:
    router = DomainAwareRouter(dim=2, num_experts=3, top_k=2)
    with torch.no_grad():
        router.gate.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        router.alpha.fill_(alpha)
    return router


def test_top2_renormalised_weights_and_aux_on_a_hand_made_routing():
    # logits (ln 3, ln 2, 0) -> softmax (3, 2, 1)/6, top-2 {0, 1}; (ln 2, ln 6, 0) -> (2, 6, 1)/9, top-2 {1, 0}
    x = torch.tensor([[math.log(3), math.log(2)], [math.log(2), math.log(6)]])
    out = _router(alpha=0.0)(x)
    assert out.weights.tolist()[0] == pytest.approx([3 / 5, 2 / 5, 0.0])
    assert out.weights.tolist()[1] == pytest.approx([1 / 4, 3 / 4, 0.0])
    assert (out.weights[:, 2] == 0).all()
    # P = (13/36, 1/2, 5/36), f = (1, 1, 0): l = 13/36 + 1/2
    assert out.aux_loss.item() == pytest.approx(13 / 36 + 1 / 2)


def test_domain_prompt_term():
    router = _router(alpha=1.0)  # logits = p W_d for every token
    with torch.no_grad():
        router.domain_gate.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        router.prompt.copy_(torch.tensor([math.log(3), math.log(1.5)]))  # logits (0, ln 3, ln 1.5)
    out = router(torch.randn(5, 2))
    assert out.weights.tolist() == [pytest.approx([0.0, 2 / 3, 1 / 3])] * 5
    # half-way: logits 0.5 * token + 0.5 * prompt
    router.alpha.data.fill_(0.5)
    x = torch.tensor([[2.0, 0.0]])
    g = 0.5 * torch.tensor([2.0, 0.0, 0.0]) + 0.5 * torch.tensor([0.0, math.log(3), math.log(1.5)])
    assert torch.allclose(router.logits(x)[0], g)


def test_sparse_mixture_equals_the_dense_weighted_sum():
    torch.manual_seed(0)
    experts = [BottleneckAdapter(8, 2, zero_init_up=False) for _ in range(4)]
    from plugins.routers.top_k import SoftmaxTopKRouter

    moe = SparseMixture(experts, SoftmaxTopKRouter(dim=8, num_experts=4, top_k=2))
    x = torch.randn(3, 5, 8)
    out = moe(x)
    dense = sum(out.weights[..., k:k + 1] * experts[k](x) for k in range(4))
    assert torch.allclose(out.output, dense, atol=1e-6)
    assert ((out.weights > 0).sum(-1) == 2).all()
    assert torch.allclose(out.weights.sum(-1), torch.ones(3, 5))


def test_fresh_adapter_outputs_zero():
    adapter = BottleneckAdapter(16, 2)
    assert torch.equal(adapter(torch.randn(4, 16)), torch.zeros(4, 16))


def test_sdm_on_a_2x2_example():
    """v = (e1, e2), t = (e1, (e1 + e2)/sqrt 2), tau = 1, ids (0, 1): q = I."""
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    t = torch.tensor([[2.0, 0.0], [1.0, 1.0]], requires_grad=True)  # norms do not matter (cosine)
    eps = 1e-8
    c = 1 / math.sqrt(2)
    s = [[1.0, c], [0.0, c]]  # s_ij = cos(v_i, t_j)

    def kl(row, target):
        z = sum(math.exp(a) for a in row)
        p = [math.exp(a) / z for a in row]
        return sum(pi * (math.log(pi) - math.log(qi + eps)) for pi, qi in zip(p, target))

    target = [[1.0, 0.0], [0.0, 1.0]]
    i2t = (kl(s[0], target[0]) + kl(s[1], target[1])) / 2
    t2i = (kl([s[0][0], s[1][0]], target[0]) + kl([s[0][1], s[1][1]], target[1])) / 2
    loss = SDMLoss(temperature=1.0)(v, t, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(i2t + t2i, rel=1e-6)
    # same identity: q = (1/2, 1/2) everywhere
    same = SDMLoss(temperature=1.0)(v, t, torch.tensor([4, 4])).item()
    half = [0.5, 0.5]
    expected = (kl(s[0], half) + kl(s[1], half) + kl([s[0][0], s[1][0]], half) + kl([s[0][1], s[1][1]], half)) / 2
    assert same == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(v.grad).all() and torch.isfinite(t.grad).all()


def test_masking_rule_statistics():
    # long captions (SOT, 70 words, EOT, padding): a caption with no token selected (0.85^70) is practically absent
    g = torch.Generator().manual_seed(0)
    tokens = torch.zeros(2000, 77, dtype=torch.long)
    tokens[:, 0], tokens[:, 71] = 49406, 49407
    tokens[:, 1:71] = torch.randint(1, MASK_TOKEN_ID, (2000, 70), generator=g)
    out = mask_caption_tokens(tokens, prob=0.15, generator=g)
    special = (tokens == 0) | (tokens >= MASK_TOKEN_ID)
    assert torch.equal(out[special], tokens[special])  # padding, <start>, <end> never touched
    eligible = ~special
    n = int(eligible.sum())
    masked = float(((out == MASK_TOKEN_ID) & eligible).sum()) / n
    replaced = float(((out != tokens) & (out != MASK_TOKEN_ID) & eligible).sum()) / n
    # 15% selected: 80% -> mask (12% of tokens), 10% -> a random id (1.5%, minus the rare draw of the same id),
    # 10% unchanged (140,000 tokens: binomial std 0.0009 and 0.0003)
    assert masked == pytest.approx(0.12, abs=0.004)
    assert replaced == pytest.approx(0.015, abs=0.002)
    assert ((out[eligible] >= 1) & (out[eligible] <= MASK_TOKEN_ID)).all()


def test_masking_forces_one_mask_per_caption():
    tokens = captions_batch(50, seed=2)
    out = mask_caption_tokens(tokens, prob=1e-9, generator=torch.Generator().manual_seed(0))
    assert (out[:, 1] == MASK_TOKEN_ID).all()
    assert torch.equal(out[:, 2:], tokens[:, 2:])
