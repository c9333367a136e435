"""SAGE analyses: module names, linear CKA known answers, gate statistics, expert-vs-merged CKA, written files."""
import copy
import csv

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from plugins.sage.analysis import (block_index, collect_gate_weights, collect_module_outputs, expert_cka_table,
                                   gate_correlation, linear_cka, mean_gate_table, module_type, run_analysis)
from plugins.routers import Router, RouterOutput
from plugins.sage.gated_model import build_gated_vit
from plugins.tuners.inject import inject_lora, lora_factors_from_peft

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_vit(seed):
    torch.manual_seed(seed)
    return VisionTransformer(img_size=(32, 16), patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                             num_classes=0).eval()


def loader(sizes=(3, 2, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"images": torch.randn(b, 3, 32, 16, generator=g), "targets": torch.zeros(b)} for b in sizes]


def vit_forward(model, batch):
    return model(batch["images"])


def trained_experts(base, k):
    """K single-expert models: ``base`` with one peft LoRA each, random (non-zero) B."""
    experts = []
    for s in range(k):
        e = inject_lora(copy.deepcopy(base), rank=2, alpha=4)
        torch.manual_seed(100 + s)
        with torch.no_grad():
            for n, p in e.named_parameters():
                if "lora_" in n:
                    p.normal_(std=0.3)
        experts.append(e)
    return experts


def gated_from(base, experts, gate="sage", gate_std=0.0):
    model = copy.deepcopy(base)
    layers = build_gated_vit(model, experts=[lora_factors_from_peft(e, "default") for e in experts], gate=gate,
                             num_tokens=9)
    if gate_std:
        torch.manual_seed(7)
        with torch.no_grad():
            for layer in layers.values():
                layer.gate.weight.normal_(std=gate_std)
    return model, layers


class PickGate(Router):
    """Router that always puts weight 1 on expert ``index``."""

    def __init__(self, index, num_experts=2):
        super().__init__(num_experts=num_experts)
        self.index = index

    def route(self, delta, **context):
        g = torch.zeros(delta.shape[:2], dtype=delta.dtype)
        g[:, self.index] = 1.0
        return RouterOutput(g)


@pytest.mark.parametrize("name,kind,block", [
    ("blocks.0.attn.qkv", "QKV", 0), ("backbone.vit.blocks.3.attn.proj", "Proj", 3),
    ("vit.blocks.11.mlp.fc1", "FC1", 11), ("blocks.7.mlp.fc2", "FC2", 7)])
def test_module_type_and_block(name, kind, block):
    assert module_type(name) == kind and block_index(name) == block


@pytest.mark.parametrize("name", ["patch_embed.proj", "blocks.0.norm1", "blocks.0.attn.qkv.base_layer", "head"])
def test_module_type_rejects_other_modules(name):
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        module_type(name)


def test_linear_cka_known_answers():
    # 1-d: CKA is the squared Pearson correlation; centred x = (-1, 0, 1), y = (0, -1, 1): r = 1/2
    assert linear_cka(np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [0.0], [2.0]])) == pytest.approx(0.25)
    # x centred with X^T X = 2 I (||.||_F = 2 sqrt 2), y its first column (Y^T Y = 2), ||Y^T X||^2 = 4
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    assert linear_cka(x, x[:, :1]) == pytest.approx(1 / np.sqrt(2))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 6)), rng.normal(size=(50, 4))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert linear_cka(a, a) == pytest.approx(1.0)
    assert linear_cka(a, b) == pytest.approx(linear_cka(a @ q, 3.5 * b + 2.0))  # orthogonal, scale, shift
    assert linear_cka(a, b) == pytest.approx(linear_cka(b, a))
    assert 0 < linear_cka(a, b) < 1
    assert np.isnan(linear_cka(np.ones((5, 2)), a[:5]))  # undefined without variation
    assert np.isnan(linear_cka(a[:5], a[:1].repeat(5, axis=0) + 1e-9 * a[:5, :1]))  # float noise only


def test_zero_sage_gate_weights_are_uniform():
    base = tiny_vit(0)
    model, layers = gated_from(base, trained_experts(base, 3))
    model.train()
    w = collect_gate_weights(model, loader(), forward_fn=vit_forward, progress=False)
    assert model.training  # mode restored
    assert list(w) == list(layers) and len(w) == 8
    for v in w.values():
        np.testing.assert_array_equal(v, np.full((8, 3), np.float32(1 / 3), dtype=np.float64))
    table = mean_gate_table(w, ["a", "b", "c"])
    assert table.by_type.rows == ("QKV", "Proj", "FC1", "FC2") and table.by_type.cols == ("a", "b", "c")
    assert table.per_layer.rows == tuple(layers)


def test_gate_weight_errors():
    base = tiny_vit(0)
    with pytest.raises(ValueError, match="no GatedLoRALinear"):
        collect_gate_weights(base, loader(), forward_fn=vit_forward, progress=False)
    avg, _ = gated_from(base, trained_experts(base, 2), gate="avg")
    with pytest.raises(ValueError, match="LoRA-Avg"):
        collect_gate_weights(avg, loader(), forward_fn=vit_forward, progress=False)


def test_trained_gate_means_and_correlation():
    base = tiny_vit(0)
    model, layers = gated_from(base, trained_experts(base, 2), gate_std=0.5)
    w = collect_gate_weights(model, loader(), forward_fn=vit_forward, progress=False)
    table = mean_gate_table(w, ["src0", "src1"])
    np.testing.assert_allclose(table.by_type.values.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(table.per_layer.values.sum(axis=1), 1.0, atol=1e-6)
    # QKV row = mean over images and the two blocks
    expected = (w["blocks.0.attn.qkv"].mean(0) + w["blocks.1.attn.qkv"].mean(0)) / 2
    np.testing.assert_allclose(table.by_type.values[0], expected, atol=1e-12)
    corr = gate_correlation(w)
    assert list(corr) == ["QKV", "Proj", "FC1", "FC2"]
    for m in corr.values():  # g and 1 - g
        np.testing.assert_allclose(m, [[1.0, -1.0], [-1.0, 1.0]], atol=1e-9)


def test_gate_correlation_pools_blocks():
    # one-hot weights, each expert picked twice over 2 blocks x 3 images: corr = (-1/9) / (2/9) = -1/2
    eye = np.eye(3)
    w = {"blocks.0.mlp.fc1": eye, "blocks.1.mlp.fc1": eye[[1, 2, 0]]}
    np.testing.assert_allclose(gate_correlation(w)["FC1"], 1.5 * np.eye(3) - 0.5, atol=1e-12)


def test_module_outputs_cls_and_mean_match_forward_features():
    vit = tiny_vit(0)
    batches = loader((2, 3))
    x = torch.cat([b["images"] for b in batches])
    with torch.no_grad():
        tokens = vit.forward_features(x)  # output of the final norm, (B, N, d)
    for reduce, ref in (("cls", tokens[:, 0]), ("mean", tokens.mean(1))):
        out = collect_module_outputs(vit, batches, ["norm"], forward_fn=vit_forward, reduce=reduce, progress=False)
        np.testing.assert_allclose(out["norm"], ref.numpy(), atol=1e-6)

    def broken(model, batch):
        model(batch["images"])
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        collect_module_outputs(vit, batches, ["norm"], forward_fn=broken, progress=False)
    assert not vit.norm._forward_hooks  # removed despite the error


def test_cka_is_one_for_the_expert_the_gate_picks():
    base = tiny_vit(0)
    experts = trained_experts(base, 2)
    model, layers = gated_from(base, experts)
    for layer in layers.values():
        layer.gate = PickGate(0)
    names = list(layers)
    for reduce in ("cls", "mean"):
        kw = dict(forward_fn=vit_forward, reduce=reduce, progress=False)
        merged = collect_module_outputs(model, loader(), names, **kw)
        outs = [collect_module_outputs(e, loader(), names, **kw) for e in experts]
        np.testing.assert_allclose(merged["blocks.1.mlp.fc2"], outs[0]["blocks.1.mlp.fc2"], atol=1e-5)
        table = expert_cka_table(merged, outs, ["picked", "other"])
        per_layer = table.per_layer.values
        if reduce == "cls":  # block 0's QKV sees the class token before any attention: same for every image
            assert names[0] == "blocks.0.attn.qkv" and np.isnan(per_layer[0]).all()
            per_layer = per_layer[1:]
        np.testing.assert_allclose(per_layer[:, 0], 1.0, atol=1e-6)
        np.testing.assert_allclose(table.by_type.values[:, 0], 1.0, atol=1e-6)  # NaN left out of the mean
        assert per_layer[:, 1].min() < 0.999  # the other expert differs


def test_run_analysis_writes_everything(tmp_path, capsys):
    base = tiny_vit(0)
    experts = trained_experts(base, 2)
    model, layers = gated_from(base, experts, gate_std=0.5)
    res = run_analysis(merged_model=model, expert_models=experts, expert_names=["market", "duke"],
                       loader=loader(), output_dir=str(tmp_path / "out"), forward_fn=vit_forward,
                       layers_per_pass=3, progress=False)
    out = tmp_path / "out"
    for f in ("gate_mean.csv", "gate_mean_per_layer.csv", "gate_correlation.csv", "cka.csv", "cka_per_layer.csv",
              "summary.md"):
        assert (out / f).stat().st_size > 0 and out / f in res["files"]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["cka.png", "cka_per_layer.png", "gate_correlation.png", "gate_mean.png",
                    "gate_mean_per_layer.png"]
    for p in pngs:
        assert (out / p).read_bytes()[:8] == PNG_MAGIC
    assert res["num_images"] == 8
    # written numbers are the returned ones; the grouped passes give the one-pass CKA
    rows = list(csv.reader(open(out / "cka_per_layer.csv")))
    assert rows[0] == ["layer", "block", "module_type", "market", "duke"]
    assert rows[1][:3] == ["blocks.0.attn.qkv", "0", "QKV"]
    np.testing.assert_array_equal(np.array([r[3:] for r in rows[1:]], dtype=float), res["cka"].per_layer.values)
    kw = dict(forward_fn=vit_forward, progress=False)
    merged = collect_module_outputs(model, loader(), list(layers), **kw)
    ref = expert_cka_table(merged, [collect_module_outputs(e, loader(), list(layers), **kw) for e in experts],
                           ["market", "duke"])
    np.testing.assert_allclose(res["cka"].per_layer.values, ref.per_layer.values, atol=1e-12)
    gate_rows = list(csv.reader(open(out / "gate_mean.csv")))
    assert [r[0] for r in gate_rows] == ["module_type", "QKV", "Proj", "FC1", "FC2"]
    np.testing.assert_allclose(np.array([r[1:] for r in gate_rows[1:]], dtype=float).sum(1), 1.0, atol=1e-6)
    summary = (out / "summary.md").read_text()
    assert "| module   |" in summary and "![cka](cka.png)" in summary
    assert "Linear CKA" in capsys.readouterr().out
