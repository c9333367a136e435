"""Experts round-trip through peft's adapter layout (json + safetensors) without unpickling."""
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from plugins.tuners.expert_bank import (CONFIG_NAME, WEIGHTS_NAME, load_expert, load_expert_bank, load_expert_into,
                                        lora_factors, lora_factors_from_peft, save_expert, trained_biases)
from plugins.tuners.inject import inject_lora


def tiny_vit():
    torch.manual_seed(0)
    return VisionTransformer(img_size=(32, 16), patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                             num_classes=0).eval()


def trained_expert(seed, train_bias=False):
    vit = tiny_vit()
    inject_lora(vit, rank=2, alpha=4, dropout=0.05, train_bias=train_bias)
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in vit.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return vit


@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an expert load tried to unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


@pytest.mark.parametrize("train_bias", [False, True])
def test_round_trip_identical_outputs(tmp_path, no_unpickling, train_bias):
    src = trained_expert(1, train_bias=train_bias)
    x = torch.randn(2, 3, 32, 16)
    ref = src(x)
    save_expert(src, str(tmp_path / "e"))
    assert sorted(os.listdir(tmp_path / "e")) == [CONFIG_NAME, WEIGHTS_NAME]
    keys = load_file(str(tmp_path / "e" / WEIGHTS_NAME)).keys()
    assert all(k.startswith("base_model.model.") for k in keys)
    assert sum(".lora_" in k for k in keys) == 16 and (len(keys) > 16) == train_bias
    dst = tiny_vit()
    load_expert_into(dst, str(tmp_path / "e"), adapter_name="target")
    assert torch.equal(dst(x), ref)


def test_loads_with_peft_from_pretrained(tmp_path):
    from peft import PeftModel

    src = trained_expert(2)
    x = torch.randn(2, 3, 32, 16)
    save_expert(src, str(tmp_path / "e"))
    model = PeftModel.from_pretrained(tiny_vit(), str(tmp_path / "e")).eval()
    assert torch.allclose(model(x), src(x), atol=1e-6)


def test_biases_saved_and_factors(tmp_path, no_unpickling):
    src = trained_expert(3, train_bias=True)
    save_expert(src, str(tmp_path / "e"))
    expert = load_expert(str(tmp_path / "e"))
    biases = trained_biases(expert)
    assert "blocks.0.attn.qkv.bias" in biases and "blocks.0.norm1.bias" in biases
    assert torch.equal(biases["blocks.0.norm1.bias"], src.blocks[0].norm1.bias)
    factors = lora_factors(expert)
    a, b, s = factors["blocks.1.mlp.fc2"]
    assert s == 2.0 and torch.equal(b, src.blocks[1].mlp.fc2.lora_B["default"].weight)
    assert a.shape == (2, 64) and b.shape == (32, 2)


def test_bank_order_and_refusals(tmp_path, no_unpickling):
    for name, seed in (("b_duke", 4), ("a_market", 5)):  # a bank: one expert folder per name
        save_expert(trained_expert(seed), str(tmp_path / "bank" / name))
    assert [e.name for e in load_expert_bank(str(tmp_path / "bank"))] == ["a_market", "b_duke"]
    assert [e.name for e in load_expert_bank(str(tmp_path / "bank"), ["b_duke", "a_market"])] == ["b_duke",
                                                                                                    "a_market"]
    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / CONFIG_NAME).write_text((tmp_path / "bank" / "a_market" / CONFIG_NAME).read_text())
    (bad / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="pickled"):
        load_expert(str(bad))
    with pytest.raises(FileNotFoundError, match="no expert folders"):
        load_expert_bank(str(tmp_path / "pickled"))
    with pytest.raises(KeyError, match="no peft adapter"):
        save_expert(tiny_vit(), str(tmp_path / "x"))


def test_live_and_saved_factors_are_one_conversion(tmp_path):
    """Factors taken from a live model with 11 adapters (``e1`` is a prefix of ``e10``) equal each peft layer's own
    A, B and scaling, and what the saved file of the same adapter gives."""
    vit = tiny_vit()
    for k in range(11):
        inject_lora(vit, rank=2, alpha=2.0 + k, adapter_name=f"e{k}")
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in vit.named_parameters():
            if "lora_" in n:
                p.normal_()
    for name in ("e1", "e10"):
        live = lora_factors_from_peft(vit, name)
        qkv = vit.blocks[1].attn.qkv
        a, b, s = live["blocks.1.attn.qkv"]
        assert a is not None and torch.equal(a, qkv.lora_A[name].weight) and torch.equal(b, qkv.lora_B[name].weight)
        assert s == qkv.scaling[name] and len(live) == 8
        save_expert(vit, str(tmp_path / name), adapter_name=name)
        saved = lora_factors(load_expert(str(tmp_path / name)))
        assert saved.keys() == live.keys()
        for key, (a, b, s) in live.items():
            assert torch.equal(saved[key][0], a) and torch.equal(saved[key][1], b) and saved[key][2] == s
    with pytest.raises(KeyError, match="no peft adapter"):
        lora_factors_from_peft(vit, "e11")
