"""LoRA injection into exactly the 4 block linears of a ViT (peft), golden ViT-B/16 sizes, gated injection."""
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from plugins.tuners.inject import (VIT_BLOCK_LINEARS, inject_gated_lora, inject_lora, lora_factors_from_peft,
                                   lora_parameter_count, remove_peft_layers, target_module_names)


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    return VisionTransformer(img_size=(32, 16), patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                             num_classes=0).eval()


def test_vit_b_targets_and_expert_size():
    import timm

    with torch.device("meta"):  # sizes only: no memory, no init cost
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=(256, 128), num_classes=0)
    assert vit.pos_embed.shape[1] == 129
    assert sum(p.numel() for p in vit.parameters()) == 85_746_432
    names = target_module_names(vit)
    assert len(names) == 48 and "patch_embed.proj" not in names
    inject_lora(vit, rank=8, alpha=32, dropout=0.05)
    assert lora_parameter_count(vit) == 1_179_648 == 12 * 8 * (768 + 2304 + 768 + 768 + 768 + 3072 + 3072 + 768)
    assert type(vit.patch_embed.proj).__name__ == "Conv2d"
    assert target_module_names(vit) == names  # a second expert targets the same (now wrapped) modules
    inject_lora(vit, rank=8, alpha=32, adapter_name="second")
    assert lora_parameter_count(vit, "second") == 1_179_648


def test_zero_init_lora_equals_base_and_trainability():
    vit = tiny_vit()
    x = torch.randn(2, 3, 32, 16)
    ref = vit(x)
    inject_lora(vit, rank=4, alpha=8)
    assert torch.equal(vit(x), ref)
    trainable = [n for n, p in vit.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * 4 * 2  # A and B of 4 linears in 2 blocks
    biased = tiny_vit()
    inject_lora(biased, rank=4, alpha=8, train_bias=True)
    assert biased.blocks[0].norm1.bias.requires_grad and biased.patch_embed.proj.bias.requires_grad
    assert not biased.blocks[0].attn.qkv.base_layer.weight.requires_grad


def test_no_match_raises():
    with pytest.raises(ValueError, match="matches"):
        inject_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)), rank=2, alpha=2)


def test_regex_accepts_a_prefix():
    import re

    assert re.fullmatch(VIT_BLOCK_LINEARS, "backbone.vit.blocks.11.mlp.fc2")
    assert not re.fullmatch(VIT_BLOCK_LINEARS, "backbone.vit.patch_embed.proj")
    assert not re.fullmatch(VIT_BLOCK_LINEARS, "blocks.0.attn.qkv.lora_A")


def test_peft_factors_to_gated_single_expert_equals_peft_model():
    vit = tiny_vit(1)
    inject_lora(vit, rank=3, alpha=6, adapter_name="e0")
    torch.manual_seed(5)
    for n, p in vit.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 3, 32, 16)
    ref = vit(x)
    factors = lora_factors_from_peft(vit, "e0")
    assert len(factors) == 8 and all(s == 2.0 for _, _, s in factors.values())
    remove_peft_layers(vit)
    names = target_module_names(vit)
    layers = inject_gated_lora(vit, [factors])
    assert list(layers) == names and len(names) == 8
    assert target_module_names(vit, r"blocks\.\d+\.(attn|mlp)\.\w+\.base") == [n + ".base" for n in names]
    assert torch.allclose(vit(x), ref, atol=1e-5)
