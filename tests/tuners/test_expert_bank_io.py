"""Experts round-trip through peft's adapter layout (json + safetensors) without unpickling."""
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from plugins.tuners.expert_bank import (CONFIG_NAME, WEIGHTS_NAME, load_expert, load_expert_bank, load_expert_into,
                                        lora_factors, save_expert, save_expert_bank, trained_biases)
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
    save_expert_bank({"b_duke": trained_expert(4), "a_market": trained_expert(5)}, str(tmp_path / "bank"))
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
