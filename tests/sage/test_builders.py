"""SAGE model builders on tiny random ViTs built from configs/sage/demo.yml: known answers for the expert, merged,
gated and static-merge models (no data, no training).

K = 3 random "source" checkpoints (different seeds, BNNecks and classifier sizes) and K experts whose LoRA
factors and necks are random and non-zero, so every expert, neck and delta differs from the others.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from fastreid.config import get_cfg
from fastreid.modeling import build_model
from safetensors.torch import save_file

from plugins.compat.config_fixes import adjust_config_for_host
from plugins.config import add_plugins_config
from plugins.layers.gated_lora import GatedLoRALinear
from plugins.compat.checkpoint import load_state_checked
from plugins.sage.builders import (CLASSIFIER_KEY, NECK_FILE, build_expert_model, build_gated_model,
                                   build_mean_source_model, build_merged_base, build_static_merge_model,
                                   load_expert_model, load_source_weights, mean_source_state, merge_kwargs,
                                   save_expert_with_neck, vit_of)
from plugins.sage.config import add_sage_config
from plugins.tuners.expert_bank import lora_factors

REPO = Path(__file__).resolve().parents[2]
K = 3
DEPTH, DIM = 2, 32
LINEARS = [f"blocks.{i}.{m}" for i in range(DEPTH) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
SCALING = 16.0 / 4  # demo.yml: SAGE.LORA.ALPHA / SAGE.LORA.RANK


def tiny_cfg(*opts):
    """demo.yml built as tools/train_net.py builds it, shrunk to a 2-block width-32 ViT on CPU."""
    cfg = get_cfg()
    add_plugins_config(cfg)
    add_sage_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / "sage" / "demo.yml"))
    cfg.merge_from_list(["MODEL.BACKBONE.TIMM_VIT.DEPTH", DEPTH, "MODEL.BACKBONE.TIMM_VIT.EMBED_DIM", DIM,
                         "MODEL.BACKBONE.TIMM_VIT.NUM_HEADS", 2, "MODEL.BACKBONE.FEAT_DIM", DIM,
                         "MODEL.HEADS.NUM_CLASSES", 1, "MODEL.DEVICE", "cpu", *opts])
    adjust_config_for_host(cfg)
    cfg.freeze()
    return cfg


def with_opts(cfg, *opts):
    c = cfg.clone()
    c.defrost()
    c.merge_from_list(list(opts))
    c.freeze()
    return c


@torch.no_grad()
def features(model, batch):
    """(B, D) eval features (after the BNNeck, as fast-reid's EmbeddingHead returns them)."""
    model.eval()
    return model({**batch, "images": batch["images"].clone()})  # fast-reid normalises the images in place


@torch.no_grad()
def randomise_neck(model, gen):
    """Non-trivial BNNeck (affine + running statistics), so that averaging necks is visible in the features."""
    bn = model.heads.bottleneck[0]
    bn.weight.copy_(1 + 0.3 * torch.randn(bn.weight.shape, generator=gen))
    bn.bias.copy_(0.2 * torch.randn(bn.bias.shape, generator=gen))
    bn.running_mean.copy_(0.2 * torch.randn(bn.running_mean.shape, generator=gen))
    bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=gen))


def neck_of(model):
    return {k[len("heads."):]: v for k, v in model.state_dict().items()
            if k.startswith("heads.") and k != CLASSIFIER_KEY}


def vit_linear(model, name):
    """The base ``nn.Linear`` of block linear ``name`` (through a peft / gated wrapper)."""
    m = vit_of(model).get_submodule(name)
    return m.base if isinstance(m, GatedLoRALinear) else getattr(m, "base_layer", m)


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    """K source checkpoints + K saved experts; also the in-memory models they were saved from."""
    root = tmp_path_factory.mktemp("sage_bank")
    cfg = tiny_cfg()
    sources, source_paths, experts, expert_dirs = [], [], [], []
    for k in range(K):
        torch.manual_seed(100 + k)
        model = build_model(cfg)
        randomise_neck(model, torch.Generator().manual_seed(200 + k))
        state = dict(model.state_dict())
        state[CLASSIFIER_KEY] = torch.randn(5 + k, DIM)  # a source classifier: its own number of identities
        path = str(root / f"source{k}.pth")
        torch.save({"model": state}, path)
        sources.append(model.eval())
        source_paths.append(path)
    for k in range(K):
        torch.manual_seed(300 + k)
        model = build_expert_model(cfg, source_paths[k])
        gen = torch.Generator().manual_seed(400 + k)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        randomise_neck(model, gen)  # the neck stage 1 trained with the expert differs from the source's
        directory = str(root / f"expert{k}")
        save_expert_with_neck(model, directory)
        experts.append(model.eval())
        expert_dirs.append(directory)
    gen = torch.Generator().manual_seed(7)
    batch = {"images": 255 * torch.rand(4, 3, 64, 32, generator=gen), "camids": torch.zeros(4, dtype=torch.long)}
    return dict(cfg=cfg, root=root, sources=sources, source_paths=source_paths, experts=experts,
                expert_dirs=expert_dirs, batch=batch)


def source_states(bank):
    return [torch.load(p, weights_only=True)["model"] for p in bank["source_paths"]]


def expert_factors(model):
    """layer name -> (A (r, d_in), B (d_out, r)) of the in-memory peft expert."""
    vit = vit_of(model)
    return {n: (vit.get_submodule(n).lora_A["default"].weight.detach(),
                vit.get_submodule(n).lora_B["default"].weight.detach()) for n in LINEARS}


# --- stage 1: one expert ---------------------------------------------------------------------------------------

def test_fresh_expert_is_the_source_model(bank):
    """peft's B = 0 init: the expert model computes exactly the source model's features."""
    for k in range(K):
        model = build_expert_model(bank["cfg"], bank["source_paths"][k])
        assert torch.equal(features(model, bank["batch"]), features(bank["sources"][k], bank["batch"]))
        assert model.heads.weight.shape == (1, DIM)  # the source classifier (5 + k rows) is not loaded


def test_expert_trainable_parameters(bank):
    model = build_expert_model(bank["cfg"], bank["source_paths"][0])
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    lora = [f"backbone.vit.{n}.lora_{ab}.default.weight" for n in LINEARS for ab in "AB"]
    # BNNeck bias is frozen by fast-reid's EmbeddingHead (bias_freeze), so the head trains weight + classifier
    assert trainable == sorted(lora + ["heads.weight", "heads.bottleneck.0.weight"])
    assert all(not p.requires_grad for n, p in model.backbone.named_parameters() if "lora_" not in n)


def test_saved_expert_reloads_to_the_same_model(bank):
    for k in range(K):
        assert sorted(os.listdir(bank["expert_dirs"][k])) == ["adapter_config.json", "adapter_model.safetensors",
                                                              NECK_FILE]
        loaded = load_expert_model(bank["cfg"], bank["source_paths"][k], bank["expert_dirs"][k])
        assert not any(p.requires_grad for p in loaded.parameters())
        expected = features(bank["experts"][k], bank["batch"])
        assert not torch.allclose(expected, features(bank["sources"][k], bank["batch"]), atol=1e-3)
        torch.testing.assert_close(features(loaded, bank["batch"]), expected, rtol=0, atol=1e-6)


def test_source_weights_from_safetensors(bank, tmp_path):
    state = torch.load(bank["source_paths"][1], weights_only=True)["model"]
    path = str(tmp_path / "source1.safetensors")
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    model = build_model(bank["cfg"])
    load_source_weights(model, path)
    assert torch.equal(features(model, bank["batch"]), features(bank["sources"][1], bank["batch"]))


# --- stage 2: merged base, gated model, static merges ----------------------------------------------------------

def test_merged_base_is_the_mean(bank):
    model, experts = build_merged_base(bank["cfg"], bank["source_paths"], bank["expert_dirs"])
    states = source_states(bank)
    merged = model.state_dict()
    vit_keys = [k for k in merged if k.startswith("backbone.vit.")]
    assert len(vit_keys) > 20
    for key in vit_keys:
        torch.testing.assert_close(merged[key], sum(s[key] for s in states) / K, msg=key)
    # the neck is the experts' mean (stage-1 BNNecks), not the sources'
    necks = [neck_of(e) for e in bank["experts"]]
    for key, value in neck_of(model).items():
        if value.is_floating_point():
            torch.testing.assert_close(value, sum(n[key] for n in necks) / K, msg=key)
            assert not torch.allclose(value, sum(s["heads." + key] for s in states) / K)
        else:
            assert torch.equal(value, necks[0][key])
    assert not any(p.requires_grad for p in model.parameters())
    # the experts read back in order, factors as saved
    assert [e.name for e in experts] == [f"expert{k}" for k in range(K)]
    for k, e in enumerate(experts):
        factors = lora_factors(e)
        assert sorted(factors) == sorted(LINEARS)
        a, b = expert_factors(bank["experts"][k])["blocks.1.mlp.fc1"]
        assert torch.equal(factors["blocks.1.mlp.fc1"][0], a) and torch.equal(factors["blocks.1.mlp.fc1"][1], b)
        assert factors["blocks.1.mlp.fc1"][2] == SCALING


def test_merged_base_without_expert_necks_keeps_the_source_mean(bank, tmp_path):
    dirs = []
    for k, d in enumerate(bank["expert_dirs"]):
        dirs.append(str(tmp_path / f"e{k}"))
        shutil.copytree(d, dirs[-1])
    os.remove(os.path.join(dirs[1], NECK_FILE))
    model, _ = build_merged_base(bank["cfg"], bank["source_paths"], dirs)
    states = source_states(bank)
    for key, value in neck_of(model).items():
        if value.is_floating_point():
            torch.testing.assert_close(value, sum(s["heads." + key] for s in states) / K, msg=key)


def test_lora_avg_equals_avg_gate_equals_zero_sage_gate(bank):
    cfg, args = bank["cfg"], (bank["source_paths"], bank["expert_dirs"])
    static = features(build_static_merge_model(cfg, *args, "lora_avg"), bank["batch"])
    avg = features(build_gated_model(cfg, *args, gate="avg"), bank["batch"])
    sage_model = build_gated_model(cfg, *args)  # SAGE.GATE.KIND "sage"
    gates = [m.gate for m in sage_model.modules() if isinstance(m, GatedLoRALinear)]
    assert len(gates) == len(LINEARS) and all(torch.count_nonzero(g.weight) == 0 for g in gates)
    sage = features(sage_model, bank["batch"])
    torch.testing.assert_close(avg, static, rtol=0, atol=1e-5)
    torch.testing.assert_close(sage, static, rtol=0, atol=1e-5)
    # the experts do move the features: LoRA-Avg differs from the plain merged base
    base, _ = build_merged_base(cfg, *args)
    assert not torch.allclose(features(base, bank["batch"]), static, atol=1e-3)


def test_mean_backbone_exclusion_rule(bank):
    """The merged base's one rule: every key of the fast-reid model but the classifier heads.weight (its row count
    is each source's identity count: 5, 6, 7 here); the BNNeck is averaged like the backbone."""
    states = source_states(bank)
    assert len({s[CLASSIFIER_KEY].shape for s in states}) == K
    model = build_model(bank["cfg"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mean = mean_source_state(model, bank["source_paths"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # checked against, not loaded
    assert set(mean) == set(states[0]) - {CLASSIFIER_KEY}
    assert any(k.startswith("heads.bottleneck") for k in mean)  # a "head" prefix rule would have dropped the neck
    for key, value in mean.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, sum(s[key] for s in states) / K, msg=key)


def test_avg_vit_is_the_mean_source_model(bank):
    """"Avg + ViT": the mean of the source models (backbone and neck), frozen, and the same backbone the merged
    base starts from (one route); it differs from every single source."""
    model = build_mean_source_model(bank["cfg"], bank["source_paths"])
    assert not any(p.requires_grad for p in model.parameters())
    states, own = source_states(bank), model.state_dict()
    for key in own:
        if key != CLASSIFIER_KEY and own[key].is_floating_point():
            torch.testing.assert_close(own[key], sum(s[key] for s in states) / K, msg=key)
    base, _ = build_merged_base(bank["cfg"], bank["source_paths"], bank["expert_dirs"])
    merged = base.state_dict()
    for key in [k for k in own if k.startswith("backbone.")]:
        assert torch.equal(own[key], merged[key]), key
    feats = features(model, bank["batch"])
    for src in bank["sources"]:
        assert not torch.allclose(feats, features(src, bank["batch"]), atol=1e-4)


def test_knots_rows_fix_their_combination(bank):
    """KnOTS-TA and KnOTS-TIES are two rows: each fixes its combination, SAGE.MERGE sets the rest. Known answer:
    aligned Task Arithmetic over the full joint SVD is plain Task Arithmetic (U sum_k C_k = sum_k dW_k)."""
    cfg = with_opts(bank["cfg"], "SAGE.MERGE.SCALE", 0.5, "SAGE.MERGE.DENSITY", 0.3)
    assert merge_kwargs(cfg, "knots_ta") == {"combination": "task_arithmetic", "keep": "authors", "scale": 0.5}
    assert merge_kwargs(cfg, "knots_ties") == {"combination": "ties", "keep": "authors", "scale": 0.5, "density": 0.3}
    args = (bank["source_paths"], bank["expert_dirs"])
    ta = build_static_merge_model(cfg, *args, "task_arithmetic")
    knots_ta = build_static_merge_model(cfg, *args, "knots_ta")
    knots_ties = build_static_merge_model(cfg, *args, "knots_ties")
    for name in LINEARS:
        w_ta, w_kta = vit_linear(ta, name).weight, vit_linear(knots_ta, name).weight
        torch.testing.assert_close(w_kta, w_ta, rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.allclose(vit_linear(knots_ties, "blocks.0.mlp.fc1").weight,
                              vit_linear(knots_ta, "blocks.0.mlp.fc1").weight, atol=1e-4)


def test_load_state_checked_names_file_keys_and_shapes():
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    state = {k: v.clone() + 1 for k, v in module.state_dict().items()}
    load_state_checked(module, dict(state), what="x.pth")
    assert torch.equal(module[0].weight, state["0.weight"])
    with pytest.raises(ValueError, match=r"x\.pth.*1 tensors differ in shape.*0\.weight \(2, 4\) \(model: \(2, 3\)\)"):
        load_state_checked(module, {**state, "0.weight": torch.zeros(2, 4)}, what="x.pth")
    no_bias = {k: v for k, v in state.items() if k != "0.bias"}
    with pytest.raises(KeyError, match=r"x\.pth.*missing \['0\.bias'\]"):
        load_state_checked(module, no_bias, what="x.pth")
    load_state_checked(module, no_bias, what="x.pth", optional_keys=("0.bias",))
    with pytest.raises(KeyError, match=r"y\.pth.*unexpected \['extra'\]"):
        load_state_checked(module, {**state, "extra": torch.zeros(1)}, what="y.pth")
    # ignored keys are neither loaded nor required, whatever their shape
    before = module[0].weight.clone()
    load_state_checked(module, {**state, "0.weight": torch.zeros(9)}, what="z", ignore_keys=("0.weight",))
    assert torch.equal(module[0].weight, before)


@pytest.mark.parametrize("row,scale", [("lora_avg", None), ("task_arithmetic", 0.7)])
def test_static_merge_weights_by_hand(bank, row, scale):
    """W = mean_k W_k + c * sum_k s B_k A_k with c = 1/K (LoRA-Avg) or SAGE.MERGE.SCALE (Task Arithmetic)."""
    cfg = with_opts(bank["cfg"], "SAGE.MERGE.SCALE", scale) if scale is not None else bank["cfg"]
    coef = 1.0 / K if scale is None else scale
    model = build_static_merge_model(cfg, bank["source_paths"], bank["expert_dirs"], row)
    states = source_states(bank)
    factors = [expert_factors(e) for e in bank["experts"]]
    for name in LINEARS:
        mean_w = sum(s[f"backbone.vit.{name}.weight"] for s in states) / K
        delta = sum(SCALING * f[name][1] @ f[name][0] for f in factors)
        torch.testing.assert_close(vit_linear(model, name).weight.detach(), mean_w + coef * delta,
                                   rtol=1e-5, atol=1e-6, msg=name)
        assert type(vit_of(model).get_submodule(name)) is torch.nn.Linear  # folded: no adapter left
    # everything else (biases, norms, embeddings) is the plain mean
    merged = model.state_dict()
    for key in [k for k in merged if k.startswith("backbone.vit.") and
                not any(k == f"backbone.vit.{n}.weight" for n in LINEARS)]:
        torch.testing.assert_close(merged[key], sum(s[key] for s in states) / K, msg=key)


@pytest.mark.parametrize("gate", ["sage", "mole"])
def test_gated_model_trains_only_gates_and_classifier(bank, gate):
    model = build_gated_model(bank["cfg"], bank["source_paths"], bank["expert_dirs"], gate=gate)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted([f"backbone.vit.{n}.gate.{p}" for n in LINEARS for p in ("weight", "tau")]
                               + ["heads.weight"])
    layer = vit_of(model).get_submodule("blocks.0.mlp.fc2")
    assert layer.lora_A.shape == (K, 4, 4 * DIM) and layer.lora_B.shape == (K, DIM, 4)
    for k, e in enumerate(bank["experts"]):
        a, b = expert_factors(e)["blocks.0.mlp.fc2"]
        assert torch.equal(layer.lora_A[k], a) and torch.equal(layer.lora_B[k], b)


# --- errors name what is at fault ------------------------------------------------------------------------------

def test_count_mismatch_and_unknown_row(bank):
    cfg, srcs, dirs = bank["cfg"], bank["source_paths"], bank["expert_dirs"]
    with pytest.raises(ValueError, match="2 checkpoints and 3 expert folders"):
        build_merged_base(cfg, srcs[:2], dirs)
    with pytest.raises(ValueError, match="3 checkpoints and 1 expert folders"):
        build_gated_model(cfg, srcs, dirs[:1])
    with pytest.raises(ValueError, match="0 checkpoints and 0 expert folders"):
        build_static_merge_model(cfg, [], [], "ties")
    with pytest.raises(ValueError, match="unknown static merge 'sage'"):
        build_static_merge_model(cfg, srcs, dirs, "sage")


def test_missing_files(bank, tmp_path):
    cfg, srcs, dirs = bank["cfg"], bank["source_paths"], bank["expert_dirs"]
    missing = str(tmp_path / "no_such_source.pth")
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        build_expert_model(cfg, missing)
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        build_merged_base(cfg, [srcs[0], missing, srcs[2]], dirs)
    empty = tmp_path / "empty_expert"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(empty)) + ".*adapter_config.json"):
        build_gated_model(cfg, srcs, [dirs[0], str(empty), dirs[2]])
    with pytest.raises(FileNotFoundError, match=re.escape(str(empty))):
        load_expert_model(cfg, srcs[0], str(empty))


def test_checkpoint_of_another_depth_names_file_and_keys(bank, tmp_path):
    deeper = build_model(tiny_cfg("MODEL.BACKBONE.TIMM_VIT.DEPTH", DEPTH + 1))
    path = str(tmp_path / "deeper.pth")
    torch.save({"model": deeper.state_dict()}, path)
    with pytest.raises(KeyError, match=re.escape(path) + ".*unexpected.*blocks.2"):
        build_expert_model(bank["cfg"], path)
    with pytest.raises(KeyError, match="blocks.2"):  # the mean of the K sources: keys differ
        build_merged_base(bank["cfg"], [bank["source_paths"][0], path], bank["expert_dirs"][:2])


def test_checkpoint_of_another_width_names_the_key(bank, tmp_path):
    wider = build_model(tiny_cfg("MODEL.BACKBONE.TIMM_VIT.EMBED_DIM", 48, "MODEL.BACKBONE.FEAT_DIM", 48))
    path = str(tmp_path / "wider.pth")
    torch.save({"model": wider.state_dict()}, path)
    with pytest.raises(Exception, match="backbone.vit.cls_token"):
        build_expert_model(bank["cfg"], path)
    with pytest.raises(ValueError, match="backbone.vit.cls_token"):
        build_merged_base(bank["cfg"], [bank["source_paths"][0], path], bank["expert_dirs"][:2])


def test_checkpoint_of_another_width_names_the_file(bank, tmp_path):
    wider = build_model(tiny_cfg("MODEL.BACKBONE.TIMM_VIT.EMBED_DIM", 48, "MODEL.BACKBONE.FEAT_DIM", 48))
    path = str(tmp_path / "wider.pth")
    torch.save({"model": wider.state_dict()}, path)
    with pytest.raises(ValueError, match=re.escape(path)):
        build_expert_model(bank["cfg"], path)
    with pytest.raises(ValueError, match=re.escape(path)):
        build_merged_base(bank["cfg"], [bank["source_paths"][0], path], bank["expert_dirs"][:2])


@pytest.mark.parametrize("train_classifier", [True, False])
def test_stage2_step_updates_gates_and_the_classifier(bank, tmp_path, train_classifier):
    """What a stage-2 step actually updates (paper, Sec. 3: the gate vectors, the temperatures and the target
    classifier): the pipeline's stage-2 config, the pseudo-label hook's classifier swap, one SGD step."""
    from plugins.engine.pseudo_label_hook import replace_classifier
    from plugins.sage.pipeline import SAGEPipeline

    cfg = with_opts(bank["cfg"], "OUTPUT_DIR", str(tmp_path), "SAGE.GATE.TRAIN_CLASSIFIER", train_classifier)
    stage2 = SAGEPipeline(cfg).stage_cfg(2, str(tmp_path / "stage2"), trainer="SAGEGateTrainer",
                                         sources=bank["source_paths"], experts=bank["expert_dirs"], gate="sage")
    assert stage2.PLUGINS.PSEUDO_LABEL.CLASSIFIER_FROZEN is (not train_classifier)
    model = build_gated_model(stage2, bank["source_paths"], bank["expert_dirs"]).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    replace_classifier(model, optimizer, torch.randn(3, DIM), frozen=stage2.PLUGINS.PSEUDO_LABEL.CLASSIFIER_FROZEN)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = {**bank["batch"], "images": bank["batch"]["images"].clone(), "targets": torch.tensor([0, 1, 2, 0])}
    from fastreid.utils.events import EventStorage

    with EventStorage(0):  # fast-reid's losses log to the trainer's storage
        losses = model(batch)
    sum(losses.values()).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    gates = {f"backbone.vit.{n}.gate.{p}" for n in LINEARS for p in ("weight", "tau")}
    expected = gates | ({"heads.weight"} if train_classifier else set())
    assert with_grad == expected
    # tau's first gradient is 0 (w = 0 makes every logit 0, whatever tau); everything else that learns moved
    assert changed == {n for n in expected if not n.endswith(".tau")}
