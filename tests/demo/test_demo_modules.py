"""Known-answer tests of DeMo's cfg-free modules: HDM's token sets per query, ATMoE's chunk weighting and gate on
hand examples, the Simple^A / Simple^C shapes, PIFE's formula, and the model's missing-modality zeroing (after
normalisation) and test-feature layout."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plugins.demo.atmoe import ATMoE
from plugins.demo.hdm import DECOUPLED, HDM, decoupled_sets
from plugins.demo.meta_arch import DeMo
from plugins.demo.pife import PIFE


def qgelu(x: float) -> float:
    return x / (1 + math.exp(-1.702 * x))


# ---- HDM ------------------------------------------------------------------------------------------------------------

def test_hdm_feature_order_is_the_official_one():
    assert [n for n, _ in DECOUPLED] == ["r", "n", "t", "rn", "rt", "nt", "rnt"]


def test_hdm_token_sets_name_the_modalities_each_query_sees():
    seqs = [torch.full((2, 3, 4), float(v)) for v in (1, 2, 3)]  # X_R = 1, X_N = 2, X_T = 3; 3 tokens each
    sets = decoupled_sets(seqs)
    expected = {"r": [1], "n": [2], "t": [3], "rn": [1, 2], "rt": [1, 3], "nt": [2, 3], "rnt": [1, 2, 3]}
    for name, mods in expected.items():
        assert sets[name].shape == (2, 3 * len(mods), 4)
        assert sets[name][0, :, 0].tolist() == [float(m) for m in mods for _ in range(3)], name


def test_hdm_each_query_depends_only_on_its_modalities():
    torch.manual_seed(0)
    hdm = HDM(dim=16, num_heads=4, dropout=0.0).eval()
    seqs = [torch.randn(2, 5, 16, requires_grad=True) for _ in range(3)]
    out = hdm(seqs)
    assert out.shape == (2, 7, 16)
    for k, (name, idx) in enumerate(DECOUPLED):
        grads = torch.autograd.grad(out[:, k].sum(), seqs, retain_graph=True, allow_unused=True)
        seen = [i for i, g in enumerate(grads) if g is not None and g.abs().sum() > 0]
        assert seen == list(idx), (name, seen)


def test_hdm_is_a_bare_cross_attention():
    """No residual, no norm, no FFN: query "r" = MultiheadAttention(Q_r, X_R, X_R)."""
    torch.manual_seed(1)
    hdm = HDM(dim=8, num_heads=2, dropout=0.0).eval()
    seqs = [torch.randn(3, 4, 8) for _ in range(3)]
    q = hdm.queries["r"].expand(3, -1, -1)
    ref = hdm.attn["r"](q, seqs[0], seqs[0])[0][:, 0]
    torch.testing.assert_close(hdm(seqs)[:, 0], ref)


# ---- ATMoE ----------------------------------------------------------------------------------------------------------

def _constant_experts(moe: ATMoE, values) -> None:
    """Expert (h, j) outputs the constant QuickGELU(values[h][j]) (weight 0, bias = value; BN eval = identity)."""
    for h in range(moe.num_heads):
        for j in range(moe.num_features):
            lin, bn = moe.experts[h][j].mlp[0], moe.experts[h][j].mlp[2]
            nn.init.zeros_(lin.weight)
            nn.init.constant_(lin.bias, values[h][j])
            bn.eps = 0.0
    moe.eval()


def test_atmoe_weights_chunk_h_of_feature_j_and_lays_out_feature_major():
    moe = ATMoE(dim=4, num_features=2, num_heads=2)  # c = 2
    values = [[1.0, 2.0], [3.0, 4.0]]  # values[h][j]
    _constant_experts(moe, values)
    w = torch.tensor([[[0.25, 0.75], [0.6, 0.4]]])  # (B=1, H=2, n=2): gate[h, j]
    moe.gate.forward = lambda feats: w
    out, weights = moe(torch.zeros(1, 2, 4))
    # moe[j*C + h*c : j*C + (h+1)*c] = w[h, j] * QuickGELU(values[h][j])
    expected = [0.25 * qgelu(1)] * 2 + [0.6 * qgelu(3)] * 2 + [0.75 * qgelu(2)] * 2 + [0.4 * qgelu(4)] * 2
    torch.testing.assert_close(out[0], torch.tensor(expected))
    assert weights is w


def test_atmoe_expert_acts_on_its_chunk_only():
    torch.manual_seed(0)
    moe = ATMoE(dim=8, num_features=3, num_heads=4).eval()
    feats = torch.randn(2, 3, 8, requires_grad=True)
    out, _ = moe(feats)
    # output chunk (j=1, h=2) = columns 1*8 + 2*2 .. +2; its expert input is feats[:, 1, 4:6] (+ the gate, which
    # reads everything): zero the gate's dependence by detaching it.
    moe.gate.forward = (lambda f, g=moe.gate.forward: g(f.detach()))
    out, _ = moe(feats)
    g = torch.autograd.grad(out[:, 12:14].sum(), feats)[0]
    nz = (g.abs().sum(0) > 0).nonzero().tolist()
    assert nz == [[1, 4], [1, 5]]


def test_attention_gate_hand_example():
    """q = W_q BN(QuickGELU(W_red x)), k = W_k D; gate[h, j] = softmax_j(q_h . k_{j,h} / sqrt(c))."""
    moe = ATMoE(dim=4, num_features=2, num_heads=2)  # c = 2
    gate = moe.gate
    nn.init.zeros_(gate.reduce[0].weight)
    with torch.no_grad():
        gate.reduce[0].bias.copy_(torch.tensor([1.0, 0.0, 2.0, 0.0]))  # q = QuickGELU of it (BN eval, eps 0)
        gate.q.weight.copy_(torch.eye(4))
        gate.k.weight.copy_(torch.eye(4))
    gate.reduce[2].eps = 0.0
    moe.eval()
    feats = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]]])  # D_0, D_1
    w = gate(feats)[0]
    q = [qgelu(1.0), qgelu(0.0), qgelu(2.0), qgelu(0.0)]
    # head 0 (dims 0-1): logits [q0 * 1, 0]; head 1 (dims 2-3): logits [0, q2 * 3]; scaled by 1/sqrt(2)
    h0 = torch.softmax(torch.tensor([q[0] * 1.0, 0.0]) / math.sqrt(2), 0)
    h1 = torch.softmax(torch.tensor([0.0, q[2] * 3.0]) / math.sqrt(2), 0)
    torch.testing.assert_close(w, torch.stack([h0, h1]))


@pytest.mark.parametrize("combine,width", [("add", 16), ("concat", 7 * 16)])
def test_simple_gate_shapes(combine, width):
    torch.manual_seed(0)
    moe = ATMoE(dim=16, num_features=7, num_heads=1, gate="simple", combine=combine)
    out, w = moe(torch.randn(5, 7, 16))
    assert out.shape == (5, width) and moe.out_dim == width
    assert w.shape == (5, 1, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(5, 1))


def test_simple_add_is_the_sum_of_simple_concat_blocks():
    torch.manual_seed(0)
    cat = ATMoE(dim=6, num_features=7, num_heads=1, gate="simple", combine="concat").eval()
    add = ATMoE(dim=6, num_features=7, num_heads=1, gate="simple", combine="add").eval()
    add.load_state_dict(cat.state_dict())
    x = torch.randn(3, 7, 6)
    torch.testing.assert_close(add(x)[0], cat(x)[0].view(3, 7, 6).sum(1))


def test_bad_gate_settings_fail_naming_the_key():
    with pytest.raises(ValueError, match="MOE_HEADS"):
        ATMoE(dim=8, num_features=7, num_heads=2, gate="simple")
    with pytest.raises(ValueError, match="DEMO.GATE"):
        ATMoE(dim=8, gate="topk")
    with pytest.raises(ValueError, match="MOE_HEADS"):
        ATMoE(dim=8, num_heads=3)


# ---- PIFE -----------------------------------------------------------------------------------------------------------

def test_pife_formula():
    torch.manual_seed(0)
    pife = PIFE(dim=4)
    tokens = torch.randn(2, 5, 4)
    x = torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], -1)
    ref = F.linear(F.layer_norm(x, (8,), pife.norm.weight, pife.norm.bias), pife.fc.weight, pife.fc.bias)
    torch.testing.assert_close(pife(tokens), ref * torch.sigmoid(1.702 * ref))


# ---- the model ------------------------------------------------------------------------------------------------------

class _Spy(nn.Module):
    """Token encoder stand-in: records its input; tokens = a fixed linear map of the pooled pixels."""

    def __init__(self, dim=8, tokens=5):
        super().__init__()
        self.dim, self.n = dim, tokens
        self.proj = nn.Linear(3, dim * tokens)
        self.camera_parameters = []
        self.seen = None

    def forward(self, images, camids=None):
        self.seen = images.detach().clone()
        return self.proj(images.mean((2, 3))).view(images.shape[0], self.n, self.dim)


def _model(**kw):
    torch.manual_seed(0)
    return DeMo(encoder=_Spy(), num_classes=3, pixel_mean=[127.5] * 3, pixel_std=[127.5] * 3, hdm_dropout=0.0, **kw)


def _batch(b=4):
    g = torch.Generator().manual_seed(1)
    return {"modalities": {m: torch.rand(b, 3, 8, 4, generator=g) * 255 for m in ("RGB", "NI", "TI")},
            "targets": torch.tensor([0, 0, 1, 1][:b]), "camids": torch.zeros(b, dtype=torch.long)}


def test_missing_modality_is_zeroed_after_normalisation():
    model = _model(missing=("NI",)).eval()
    batch = _batch()
    model(batch)
    seen = model.encoder.seen.view(3, 4, 3, 8, 4)
    torch.testing.assert_close(seen[0], (batch["modalities"]["RGB"] - 127.5) / 127.5)
    assert torch.equal(seen[1], torch.zeros_like(seen[1]))  # zero normalised = grey 127.5 raw, not black (-1)
    torch.testing.assert_close(seen[2], (batch["modalities"]["TI"] - 127.5) / 127.5)
    model.train()
    model(batch)  # training never drops a modality
    assert model.encoder.seen.view(3, 4, 3, 8, 4)[1].abs().sum() > 0


def test_missing_zero_equals_a_grey_input():
    model = _model().eval()
    batch = _batch()
    mods = batch["modalities"]
    grey = {**batch, "modalities": {**mods, "TI": torch.full_like(mods["TI"], 127.5)}}
    ref = model(grey)
    model.set_missing(["TI"])
    torch.testing.assert_close(model(batch), ref)


def test_test_feature_layout():
    model = _model().eval()
    batch = _batch()
    out = model.features(batch)
    assert out.modal.shape == (4, 3, 8) and out.decoupled.shape == (4, 7, 8) and out.moe.shape == (4, 56)
    assert out.gate.shape == (4, 4, 7)
    feat = model(batch)
    torch.testing.assert_close(feat, F.normalize(torch.cat([out.modal.flatten(1), out.moe], 1), dim=1))
    assert model.feature_dim == 3 * 8 + 56 == feat.shape[1]
    model.test_feature = "moe"
    torch.testing.assert_close(model(batch), F.normalize(out.moe, dim=1))


def test_ladder_a_uses_the_cls_tokens():
    model = _model(pife=False, hdm=False, atmoe=False).eval()
    batch = _batch()
    out = model.features(batch)
    torch.testing.assert_close(out.modal, out.tokens[:, :, 0].transpose(0, 1))
    assert out.moe is None and model.feature_dim == 24


def test_atmoe_without_hdm_weighs_the_three_modal_features():
    model = _model(hdm=False).train()
    out = model.features(_batch())
    assert out.decoupled.shape == (4, 3, 8) and out.moe.shape == (4, 24) and out.gate.shape == (4, 4, 3)
    losses = model(_batch())
    assert set(losses) == {"loss_id", "loss_triplet"}


def test_per_modality_heads_give_four_loss_terms():
    model = _model(heads="per_modality").train()
    names = {n for n, _ in model.named_parameters()}
    assert {"bottleneck_r.weight", "classifier_t.weight", "bottleneck_moe.weight"} <= names
    assert "bottleneck.weight" not in names
    losses = model(_batch())
    assert torch.isfinite(sum(losses.values()))


def test_model_reads_the_modalities_it_names():
    model = _model().eval()
    with pytest.raises(KeyError, match="lacks"):
        model({"modalities": {"RGB": torch.zeros(1, 3, 8, 4)}})
    with pytest.raises(KeyError, match="PLUGINS.DATA.MODALITIES"):
        model({"images": torch.zeros(1, 3, 8, 4)})
