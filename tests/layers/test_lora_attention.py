"""LoRAMultiheadAttention: zero-init equals the base; a non-zero adapter on q, k, v or out equals merging
``W + s B A`` into that target's rows (float64, packed and separate projections, masks); merged(); dropout path;
gradients; and why out_proj cannot be adapted as a module (nn.MultiheadAttention never calls it)."""
import copy

import pytest
import torch
from torch import nn

from plugins.layers.lora_attention import ATTENTION_TARGETS, LoRAMultiheadAttention

D, HEADS, R = 16, 2, 3


def _mha(seed=0, kdim=None, batch_first=True):
    torch.manual_seed(seed)
    return nn.MultiheadAttention(D, HEADS, kdim=kdim, vdim=kdim, batch_first=batch_first).double().eval()


def _layer(mha, targets=ATTENTION_TARGETS, seed=1, **kw):
    layer = LoRAMultiheadAttention(copy.deepcopy(mha), targets=targets, rank=R, alpha=6.0, **kw)
    torch.manual_seed(seed)
    with torch.no_grad():
        for b in layer.lora_B.values():
            b.weight.normal_(std=0.5)
    return layer


def _reference(mha, layer):
    """A plain copy of ``mha`` with ``s B_t A_t`` added by hand to the rows of each adapted target."""
    ref, d = copy.deepcopy(mha), mha.embed_dim
    with torch.no_grad():
        for t in layer.targets:
            delta = layer.scaling * layer.lora_B[t].weight @ layer.lora_A[t].weight
            if t == "out":
                ref.out_proj.weight += delta
            elif ref._qkv_same_embed_dim:
                i = "qkv".index(t)
                ref.in_proj_weight[i * d:(i + 1) * d] += delta
            else:
                getattr(ref, f"{t}_proj_weight").add_(delta)
    return ref


def _causal(n):
    return torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)


def _x(*shape, seed=2):
    torch.manual_seed(seed)
    return torch.randn(*shape, dtype=torch.float64)


def test_zero_init_equals_base_and_names():
    mha = _mha()
    layer = LoRAMultiheadAttention(copy.deepcopy(mha), targets=["v", "q"], rank=R, alpha=6.0).eval()
    assert layer.targets == ("q", "v") and layer.scaling == 2.0
    shapes = {n: tuple(p.shape) for n, p in layer.named_parameters() if "lora" in n}
    assert shapes == {"lora_A.q.weight": (R, D), "lora_A.v.weight": (R, D),
                      "lora_B.q.weight": (D, R), "lora_B.v.weight": (D, R)}
    assert all(torch.count_nonzero(layer.lora_A[t].weight) > 0 for t in layer.targets)
    x = _x(2, 5, D)
    for kw in ({}, {"need_weights": False, "attn_mask": _causal(5)}):
        out, w = layer(x, x, x, **kw)
        ref_out, ref_w = mha(x, x, x, **kw)
        torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
        assert (w is None) == (ref_w is None)
    assert (layer.embed_dim, layer.num_heads, layer.batch_first) == (D, HEADS, True)


@pytest.mark.parametrize("targets", [["q"], ["k"], ["v"], ["out"], list(ATTENTION_TARGETS)])
@pytest.mark.parametrize("batch_first", [True, False])
def test_nonzero_adapter_equals_merged_rows(targets, batch_first):
    mha = _mha(batch_first=batch_first)
    layer = _layer(mha, targets)
    ref = _reference(mha, layer)
    x = _x(2, 6, D) if batch_first else _x(6, 2, D)
    padding = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    for kw in ({}, {"need_weights": False, "attn_mask": _causal(6)},
               {"key_padding_mask": padding, "average_attn_weights": False}):
        out, w = layer(x, x, x, **kw)
        ref_out, ref_w = ref(x, x, x, **kw)
        assert (out - ref_out).abs().max() < 1e-12
        assert (ref_w is None and w is None) or (w - ref_w).abs().max() < 1e-12
    assert (layer(x, x, x)[0] - mha(x, x, x)[0]).abs().max() > 1e-3  # the adapter does change the output


def test_separate_kv_dims_cross_attention():
    mha = _mha(kdim=12)
    assert not mha._qkv_same_embed_dim
    layer = _layer(mha)
    ref = _reference(mha, layer)
    q, kv = _x(2, 4, D), _x(2, 7, 12, seed=3)
    assert (layer(q, kv, kv)[0] - ref(q, kv, kv)[0]).abs().max() < 1e-12
    assert tuple(layer.lora_A["k"].weight.shape) == (R, 12)


def test_merged_and_delta_weights():
    mha = _mha()
    layer = _layer(mha, ["q", "out"])
    merged = layer.merged()
    assert type(merged) is nn.MultiheadAttention and merged is not layer.base_layer
    x = _x(3, 5, D)
    assert (merged(x, x, x)[0] - layer(x, x, x)[0]).abs().max() < 1e-12
    deltas = layer.delta_weights()
    assert set(deltas) == {"q", "out"} and tuple(deltas["q"].shape) == (D, D)
    assert torch.equal(layer.base_layer.in_proj_weight, mha.in_proj_weight)  # base untouched by merged()
    with pytest.raises(KeyError, match="not adapted"):
        layer.delta_weight("k")


class _Double(nn.Dropout):
    """A deterministic stand-in for dropout: the LoRA input times 2 (so the update counts twice)."""

    def forward(self, x):
        return 2 * x


@pytest.mark.parametrize("targets", [["q", "k", "v", "out"], ["k"], ["out"]])
def test_dropout_path_applies_the_branch_to_the_dropped_input(targets):
    mha = _mha()
    layer = _layer(mha, targets, dropout=0.5)
    x = _x(2, 5, D)
    folded = _reference(mha, layer)
    assert (layer.eval()(x, x, x)[0] - folded(x, x, x)[0]).abs().max() < 1e-12  # eval: no dropout
    layer.train().lora_dropout = _Double(0.5)
    doubled = copy.deepcopy(layer)
    doubled.scaling *= 2
    assert (layer(x, x, x)[0] - _reference(mha, doubled)(x, x, x)[0]).abs().max() < 1e-12


def test_gradients_reach_lora_only():
    layer = _layer(_mha(), dropout=0.1).train()
    x = _x(2, 5, D)
    layer(x, x, x, need_weights=False, attn_mask=_causal(5))[0].pow(2).sum().backward()
    for name, p in layer.named_parameters():
        if ".lora_" in f".{name}":
            assert p.requires_grad and p.grad is not None and torch.count_nonzero(p.grad) > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_out_proj_as_a_module_is_bypassed():
    """What peft's target "out_proj" does: wrap the out_proj module. nn.MultiheadAttention reads
    ``out_proj.weight`` itself and never calls the wrapper, so a non-zero adapter changes nothing."""
    from peft import LoraConfig, inject_adapter_in_model

    mha = _mha()
    model = nn.Sequential(copy.deepcopy(mha))
    inject_adapter_in_model(LoraConfig(r=R, lora_alpha=6, target_modules=["0.out_proj"]), model)
    with torch.no_grad():
        model[0].out_proj.lora_B["default"].weight.normal_()
    x = _x(2, 5, D)
    assert (model[0](x, x, x)[0] - mha(x, x, x)[0]).abs().max() < 1e-12
    assert (_layer(mha, ["out"])(x, x, x)[0] - mha(x, x, x)[0]).abs().max() > 1e-3  # ours is applied


def test_errors():
    with pytest.raises(ValueError, match=r"\['q', 'k', 'v', 'out'\]"):
        LoRAMultiheadAttention(_mha(), targets=["qkv"], rank=2, alpha=2)
    with pytest.raises(ValueError, match="non-empty"):
        LoRAMultiheadAttention(_mha(), targets=[], rank=2, alpha=2)
    with pytest.raises(ValueError, match="rank"):
        LoRAMultiheadAttention(_mha(), targets=["q"], rank=0, alpha=2)
    with pytest.raises(TypeError, match="MultiheadAttention"):
        LoRAMultiheadAttention(nn.Linear(D, D), targets=["q"], rank=2, alpha=2)
