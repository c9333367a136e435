"""inject_adapters by family target map (timm ViT, open_clip image and text towers): zero-init equals the base,
a non-zero adapter on each target equals merging ``W + s B A`` into that weight by hand (float64; the text tower
with its causal mask), merge_adapters, gradients, known-answer parameter counts, family detection and errors."""
import copy

import open_clip
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from plugins.layers.lora_attention import LoRAMultiheadAttention
from plugins.tuners.inject import (inject_adapters, inject_lora, lora_parameter_count,
                                   merge_adapters)
from plugins.tuners.targets import TARGET_MAPS, detect_family, find_targets

OPEN_CLIP_TARGETS = ["q", "k", "v", "out", "c_fc", "c_proj"]
TIMM_TARGETS = ["qkv", "proj", "fc1", "fc2"]


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    return VisionTransformer(img_size=(32, 16), patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                             num_classes=0).double().eval()


def tiny_clip(seed=0):
    torch.manual_seed(seed)
    return open_clip.model.CLIP(
        embed_dim=64, quick_gelu=True,
        vision_cfg={"image_size": [64, 32], "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
        text_cfg={"context_length": 77, "vocab_size": VOCAB, "width": 64, "heads": 2, "layers": 2},
    ).double().eval()


VOCAB = 512  # a small token table keeps the many model copies cheap; the largest id plays EOT (argmax pooling)


def _images(h, w, seed=1):
    torch.manual_seed(seed)
    return torch.randn(2, 3, h, w, dtype=torch.float64)


def _tokens(seed=2):
    torch.manual_seed(seed)
    tokens = torch.zeros(2, 77, dtype=torch.long)
    tokens[:, 0] = VOCAB - 2  # SOT
    tokens[0, 1:9], tokens[1, 1:5] = torch.randint(1, VOCAB - 2, (8,)), torch.randint(1, VOCAB - 2, (4,))
    tokens[0, 9], tokens[1, 5] = VOCAB - 1, VOCAB - 1  # EOT: the pooled position
    return tokens


# family -> (build the model, its forward, all targets)
FAMILIES = {
    "timm_vit": (tiny_vit, lambda m: m(_images(32, 16)), TIMM_TARGETS),
    "open_clip_visual": (tiny_clip, lambda m: m.encode_image(_images(64, 32)), OPEN_CLIP_TARGETS),
    "open_clip_text": (tiny_clip, lambda m: m.encode_text(_tokens()), OPEN_CLIP_TARGETS),
}


def _randomise_lora_b(model, seed=3):
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(std=0.3)


def _merged_by_hand(original, adapted):
    """A copy of ``original`` with ``s B A`` of every adapter of ``adapted`` added to the target's weight rows."""
    ref = copy.deepcopy(original)
    modules = dict(ref.named_modules())
    for name, layer in adapted.named_modules():
        if isinstance(layer, LoRAMultiheadAttention):
            mha, d = modules[name], layer.embed_dim
            for t in layer.targets:
                delta = layer.scaling * layer.lora_B[t].weight @ layer.lora_A[t].weight
                with torch.no_grad():
                    if t == "out":
                        mha.out_proj.weight += delta
                    else:
                        i = "qkv".index(t)
                        mha.in_proj_weight[i * d:(i + 1) * d] += delta
        elif hasattr(layer, "lora_A") and hasattr(layer, "base"):
            with torch.no_grad():
                modules[name].weight += layer.scaling * layer.lora_B.weight @ layer.lora_A.weight
    return ref


@pytest.mark.parametrize("family", list(FAMILIES))
def test_zero_init_equals_base(family):
    build, forward, targets = FAMILIES[family]
    model = build()
    ref = forward(model)
    names = inject_adapters(model, family=family, targets=targets, rank=4, alpha=8)
    assert len(names) == 2 * (3 if family.startswith("open_clip") else 4)  # attn (one module) + 2 linears / block
    out = forward(model)
    assert (out - ref).abs().max() < 1e-12


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_nonzero_target_equals_merging_by_hand(family):
    build, forward, targets = FAMILIES[family]
    original = build()
    base_out = forward(original)
    for target in targets:
        model = copy.deepcopy(original)
        inject_adapters(model, family=family, targets=[target], rank=3, alpha=6)
        _randomise_lora_b(model)
        out = forward(model)
        ref = forward(_merged_by_hand(original, model))
        assert (out - ref).abs().max() < 1e-12, target
        assert (out - base_out).abs().max() > 1e-4, target  # the adapter is not bypassed


@pytest.mark.parametrize("family", list(FAMILIES))
def test_merge_adapters_restores_plain_layers(family):
    build, forward, targets = FAMILIES[family]
    model = build()
    keys = set(model.state_dict())
    adapted = inject_adapters(model, family=family, targets=targets, rank=2, alpha=4, blocks=[1])
    _randomise_lora_b(model)
    out = forward(model)
    assert merge_adapters(model) == adapted
    assert set(model.state_dict()) == keys and lora_parameter_count(model) == 0
    assert (forward(model) - out).abs().max() < 1e-12
    assert all(type(model.get_submodule(n)) in (nn.Linear, nn.MultiheadAttention,
                                                nn.modules.linear.NonDynamicallyQuantizableLinear) for n in adapted)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradients_reach_every_adapter_and_no_frozen_weight(family):
    build, forward, targets = FAMILIES[family]
    model = build().train()
    model.requires_grad_(False)
    inject_adapters(model, family=family, targets=targets, rank=2, alpha=4, dropout=0.1)
    _randomise_lora_b(model)
    forward(model).pow(2).sum().backward()
    lora = {n: p for n, p in model.named_parameters() if ".lora_" in n}
    assert len(lora) == 2 * 2 * len(targets)
    assert all(p.requires_grad and p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in lora.values())
    assert all(not p.requires_grad and p.grad is None for n, p in model.named_parameters() if n not in lora)
    assert lora_parameter_count(model) == sum(p.numel() for p in lora.values())


def test_only_wrapped_base_weights_are_frozen():
    model = tiny_clip()
    inject_adapters(model, family="open_clip_visual", targets=["q", "c_fc"], rank=2, alpha=2, blocks=[0])
    block0, block1 = model.visual.transformer.resblocks
    assert not any(p.requires_grad for p in block0.attn.base_layer.parameters())
    assert not block0.mlp.c_fc.base.weight.requires_grad and not block0.mlp.c_fc.base.bias.requires_grad
    assert block0.mlp.c_proj.weight.requires_grad and block0.ln_1.weight.requires_grad
    assert all(p.requires_grad for p in block1.parameters())
    assert all(p.requires_grad for p in model.transformer.parameters())  # text tower untouched


def test_known_answer_parameter_counts_vit_b16():
    cfg = open_clip.get_model_config("ViT-B-16")
    with torch.device("meta"):  # sizes only: no memory, no init cost
        clip = open_clip.model.CLIP(**cfg, quick_gelu=True)
        other = copy.deepcopy(clip)
        text = copy.deepcopy(clip)
        names = inject_adapters(clip, family="open_clip_visual", targets=["q", "v"], rank=8, alpha=16)
        assert len(names) == 12 and names[0] == "visual.transformer.resblocks.0.attn"
        # 12 blocks x 2 targets x r (d_in + d_out) = 12 * 2 * 8 * (768 + 768)
        assert lora_parameter_count(clip) == 294_912
        inject_adapters(other, family="open_clip_visual", targets=OPEN_CLIP_TARGETS, rank=8, alpha=16)
        # per block: q, k, v, out: 4 * 8 * (768 + 768) = 49,152; c_fc: 8 * (768 + 3072) = 30,720;
        # c_proj: 8 * (3072 + 768) = 30,720; total 110,592 per block x 12 blocks
        assert lora_parameter_count(other) == 12 * (49_152 + 30_720 + 30_720) == 1_327_104
        inject_adapters(text, family="open_clip_text", targets=["q", "v"], rank=8, alpha=16, blocks=range(6, 12))
        assert lora_parameter_count(text) == 6 * 2 * 8 * (512 + 512) == 98_304  # text width 512, last 6 blocks


def test_known_answer_parameter_count_timm_vit_b_matches_peft():
    import timm

    with torch.device("meta"):
        ours = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=(256, 128), num_classes=0)
        theirs = copy.deepcopy(ours)
        assert len(inject_adapters(ours, targets=TIMM_TARGETS, rank=8, alpha=32)) == 48
        inject_lora(theirs, rank=8, alpha=32)
    # per block: qkv 8 (768 + 2304) + proj 8 (768 + 768) + fc1 8 (768 + 3072) + fc2 8 (3072 + 768) = 98,304
    assert lora_parameter_count(ours) == 12 * 98_304 == 1_179_648 == lora_parameter_count(theirs)


def test_detect_family_and_targets_table():
    clip = tiny_clip()
    assert detect_family(tiny_vit()) == "timm_vit"
    assert detect_family(nn.Sequential(tiny_vit())) == "timm_vit"  # a tower inside a bigger model
    assert detect_family(clip.visual) == "open_clip_visual"
    with pytest.raises(ValueError, match="several backbone families.*family="):
        detect_family(clip)
    with pytest.raises(ValueError, match="timm_vit.*open_clip_visual.*open_clip_text"):
        detect_family(nn.Sequential(nn.Linear(2, 2)))
    assert sorted(TARGET_MAPS) == ["open_clip_text", "open_clip_visual", "timm_vit"]
    assert list(TARGET_MAPS["open_clip_text"]) == OPEN_CLIP_TARGETS and list(TARGET_MAPS["timm_vit"]) == TIMM_TARGETS
    sites = find_targets(clip, "open_clip_text", ["c_proj", "q"], blocks=[1])
    assert [(s.name, s.target, s.block) for s in sites] == [("transformer.resblocks.1.attn", "q", 1),
                                                             ("transformer.resblocks.1.mlp.c_proj", "c_proj", 1)]


def test_names_relative_to_a_wrapping_model():
    model = nn.ModuleDict({"backbone": tiny_clip().visual})
    names = inject_adapters(model, targets=["v", "c_proj"], rank=2, alpha=2)
    assert names == ["backbone.transformer.resblocks.0.attn", "backbone.transformer.resblocks.0.mlp.c_proj",
                     "backbone.transformer.resblocks.1.attn", "backbone.transformer.resblocks.1.mlp.c_proj"]
    assert model["backbone"].transformer.resblocks[0].attn.targets == ("v",)


def test_errors_name_the_fault():
    clip = tiny_clip()
    with pytest.raises(KeyError, match=r"'qkv'.*open_clip_visual.*valid: \['q', 'k', 'v', 'out', 'c_fc', 'c_proj'\]"):
        inject_adapters(clip, family="open_clip_visual", targets=["qkv"], rank=2, alpha=2)
    with pytest.raises(KeyError, match="unknown backbone family 'eva'.*timm_vit"):
        inject_adapters(clip, family="eva", targets=["q"], rank=2, alpha=2)
    with pytest.raises(ValueError, match=r"block\(s\) \[5\].*blocks: \[0, 1\]"):
        inject_adapters(clip, family="open_clip_text", targets=["q"], rank=2, alpha=2, blocks=[5])
    with pytest.raises(ValueError, match="no tower of backbone family 'timm_vit'"):
        inject_adapters(clip, family="timm_vit", targets=["qkv"], rank=2, alpha=2)
    with pytest.raises(ValueError, match="rank"):
        inject_adapters(clip, family="open_clip_text", targets=["q"], rank=0, alpha=2)
    inject_adapters(clip, family="open_clip_text", targets=["q"], rank=2, alpha=2)
    with pytest.raises(ValueError, match="'k'.*open_clip_text.*transformer.resblocks.0.attn.*already carries"):
        inject_adapters(clip, family="open_clip_text", targets=["k"], rank=2, alpha=2)
    peft_vit = tiny_vit()
    inject_lora(peft_vit, rank=2, alpha=2)
    with pytest.raises(ValueError, match="'fc1'.*blocks.0.mlp.fc1.*already carries"):
        inject_adapters(peft_vit, targets=["fc1"], rank=2, alpha=2)
