"""Stage-2 model: mean backbone + K experts gated per layer; w = 0 is LoRA-Avg; golden ViT-B/16 gate sizes."""
import copy

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from plugins.sage.convert import build_gated_vit, build_gated_vit_from_bank, gate_parameters
from plugins.tuners.expert_bank import load_expert_bank, save_expert
from plugins.tuners.inject import inject_lora, lora_factors_from_peft


def tiny_vit(seed):
    torch.manual_seed(seed)
    return VisionTransformer(img_size=(32, 16), patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                             num_classes=0).eval()


def random_factors(vit, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        out.append({n: (torch.randn(2, m.in_features, generator=g) * 0.3,
                        torch.randn(m.out_features, 2, generator=g) * 0.3, 2.0)
                    for n, m in vit.named_modules() if isinstance(m, nn.Linear) and ".blocks." in "." + n})
    return out


def dense_merged(vit, experts, weights):
    """A copy of ``vit`` whose block linears are W + sum_k weights[k] s_k B_k A_k (weights per layer name)."""
    merged = copy.deepcopy(vit)
    mods = dict(merged.named_modules())
    with torch.no_grad():
        for name in experts[0]:
            mods[name].weight += sum(w * s * b @ a for w, (a, b, s) in
                                     zip(weights[name], (e[name] for e in experts)))
    return merged


def test_zero_gate_is_lora_avg_and_per_sample_merge():
    vit = tiny_vit(0)
    experts = random_factors(vit, 3)
    plain = copy.deepcopy(vit)
    layers = build_gated_vit(vit, experts=experts, gate="sage", num_tokens=9)
    assert len(layers) == 8
    x = torch.randn(2, 3, 32, 16)
    avg = dense_merged(plain, experts, {n: [1 / 3] * 3 for n in experts[0]})
    assert torch.allclose(vit(x), avg(x), atol=1e-5)
    # a trained gate: each sample equals its own dense per-sample merge, with the weights the gate chose
    torch.manual_seed(1)
    for layer in layers.values():
        nn.init.normal_(layer.gate.weight, std=0.5)
    y = vit(x)
    for i in range(2):
        w = {n: layers[n].last_gate_weights[i].tolist() for n in layers}
        assert max(max(v) for v in w.values()) > 0.4  # gate is not uniform any more
        assert torch.allclose(y[i], dense_merged(plain, experts, w)(x[i:i + 1])[0], atol=1e-4)


def test_from_bank_mean_backbone_and_biases(tmp_path):
    sources = [tiny_vit(s) for s in (1, 2, 3)]
    for k, src in enumerate(sources):
        inject_lora(src, rank=2, alpha=4, train_bias=True)
        with torch.no_grad():
            for n, p in src.named_parameters():
                if "lora_B" in n or n.endswith("bias"):
                    p.add_(torch.randn_like(p) * 0.1)
        save_expert(src, str(tmp_path / f"e{k}"))
    state_dicts = [tiny_vit(s).state_dict() for s in (1, 2, 3)]  # the frozen source backbones
    experts = load_expert_bank(str(tmp_path))
    vit = tiny_vit(9)
    build_gated_vit_from_bank(vit, experts, gate="avg", num_tokens=9, source_state_dicts=state_dicts)
    mean_w = sum(sd["blocks.1.mlp.fc1.weight"] for sd in state_dicts) / 3
    assert torch.allclose(vit.blocks[1].mlp.fc1.base.weight, mean_w, atol=1e-6)
    mean_b = sum(s.blocks[0].norm1.bias for s in sources) / 3  # trained stage-1 biases overwrite the mean
    assert torch.allclose(vit.blocks[0].norm1.bias, mean_b, atol=1e-6)
    qkv = vit.blocks[0].attn.qkv
    assert torch.allclose(qkv.base.bias, sum(s.blocks[0].attn.qkv.base_layer.bias for s in sources) / 3, atol=1e-6)
    assert torch.equal(qkv.lora_B[2], sources[2].blocks[0].attn.qkv.lora_B["default"].weight)
    assert torch.equal(qkv.lora_A[0], lora_factors_from_peft(sources[0], "default")["blocks.0.attn.qkv"][0])


@pytest.mark.parametrize("k", [3, 10])
def test_vit_b_gate_sizes(k):
    import timm

    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=(256, 128), num_classes=0)
        experts = [{n: (torch.empty(8, m.in_features), torch.empty(m.out_features, 8), 4.0)
                    for n, m in vit.named_modules() if isinstance(m, nn.Linear) and n.startswith("blocks.")}
                   for _ in range(k)]
        sage = copy.deepcopy(vit)
        build_gated_vit(sage, experts=experts, gate="sage", num_tokens=129)
        assert gate_parameters(sage) == {"weight": 10_699_776, "tau": 48}
        assert sum(p.numel() for p in sage.parameters()) == 85_746_432 + k * 1_179_648 + 10_699_776 + 48
        if k == 3:
            build_gated_vit(vit, experts=experts, gate="mole", num_tokens=129)
            assert gate_parameters(vit)["weight"] == 96_297_984 == 9 * 10_699_776
