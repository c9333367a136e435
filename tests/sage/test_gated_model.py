"""The gated ViT (plugins.sage.gated_model): K experts injected per layer with a registered router; w = 0 is
LoRA-Avg; golden ViT-B/16 gate sizes. (The mean backbone it is injected into: tests/sage/test_builders.py.)"""
import copy

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from plugins.layers.gated_lora import GatedLoRALinear
from plugins.sage.gate import SAGEGate
from plugins.sage.gated_model import build_gated_vit, gate_parameters
from plugins.sage.mole_gate import MoLEGate
from plugins.tuners.expert_bank import load_expert_bank, lora_factors, save_expert
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


def test_experts_from_a_bank_keep_the_base_weights_and_get_the_router(tmp_path):
    """Experts read from disk (peft layout) are injected as saved; the ViT's own weights are kept (the mean
    backbone is the merged base's job); "sage" / "mole" get their registered router, "avg" none."""
    sources = [tiny_vit(s) for s in (1, 2)]
    for k, src in enumerate(sources):
        inject_lora(src, rank=2, alpha=4)
        with torch.no_grad():
            for n, p in src.named_parameters():
                if "lora_B" in n:
                    p.add_(torch.randn_like(p) * 0.1)
        save_expert(src, str(tmp_path / f"e{k}"))
    experts = [lora_factors(e) for e in load_expert_bank(str(tmp_path))]
    for gate, router in (("sage", SAGEGate), ("mole", MoLEGate), ("avg", type(None))):
        vit = tiny_vit(9)
        before = {k: v.clone() for k, v in vit.state_dict().items()}
        layers = build_gated_vit(vit, experts=experts, gate=gate, num_tokens=9)
        qkv = layers["blocks.0.attn.qkv"]
        assert isinstance(qkv, GatedLoRALinear) and type(qkv.gate) is router, gate
        assert torch.equal(qkv.base.weight, before["blocks.0.attn.qkv.weight"])
        assert torch.equal(qkv.lora_B[1], sources[1].blocks[0].attn.qkv.lora_B["default"].weight)
        assert torch.equal(qkv.lora_A[0], lora_factors_from_peft(sources[0], "default")["blocks.0.attn.qkv"][0])
        if gate == "mole":
            assert qkv.gate.num_experts == 2
    with pytest.raises(ValueError, match="unknown gate kind 'dense'"):
        build_gated_vit(tiny_vit(9), experts=experts, gate="dense", num_tokens=9)


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
