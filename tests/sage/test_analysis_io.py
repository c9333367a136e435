"""The analysis of a finished SAGE run: a fake run in the pipeline's layout (tiny random ViT, no training)."""
import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from fastreid.config import get_cfg
from fastreid.modeling import build_model

from plugins.config import add_plugins_config
from plugins.sage.analysis import collect_gate_weights, gated_layers, mean_gate_table
from plugins.sage.analysis_io import analyze_pipeline_run, load_stage2_model, query_loader
from plugins.sage.builders import build_expert_model, build_gated_model, save_expert_with_neck
from plugins.sage.config import add_sage_config, eval_model_cfg
from plugins.sage.layout import run_paths

TAGS = ("a", "b")
PSEUDO_CLASSES = 7  # rows of the stage-2 classifier after pseudo-labelling (the analysis builds 1)
# Tiny ViT: 64x32 input, 8x8 patches -> 33 tokens, width 32, 2 blocks (8 gated layers).
OPTS = ["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.FEAT_DIM", "32", "MODEL.BACKBONE.TIMM_VIT.EMBED_DIM", "32",
        "MODEL.BACKBONE.TIMM_VIT.DEPTH", "2", "MODEL.BACKBONE.TIMM_VIT.NUM_HEADS", "2",
        "SAGE.SOURCES", '("SynthReIDA", "SynthReIDB")', "SAGE.SOURCE_TAGS", str(TAGS),
        "DATALOADER.NUM_WORKERS", "0", "TEST.IMS_PER_BATCH", "32"]


def make_cfg(repo_root, output_dir, extra=()):
    cfg = get_cfg()
    add_plugins_config(cfg)
    add_sage_config(cfg)
    cfg.merge_from_file(str(repo_root / "configs" / "sage" / "demo.yml"))
    cfg.merge_from_list(OPTS + ["OUTPUT_DIR", str(output_dir), *extra])
    cfg.freeze()
    return cfg


def _randomise(model, seed, keys=("lora_B",)):
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if any(k in n for k in keys):
                p.normal_(std=0.3)


def write_fake_run(cfg):
    """stage0/<tag>/model_final.pth, stage1/<tag>/expert/, stage2/sage/model_final.pth as SAGEPipeline writes
    them; returns the saved stage-2 state dict."""
    root = cfg.OUTPUT_DIR
    c = cfg.clone()
    c.defrost()
    c.MODEL.HEADS.NUM_CLASSES = 5  # a source classifier: its rows differ from everything built later
    c.freeze()
    sources = []
    for k, tag in enumerate(TAGS):
        torch.manual_seed(k)
        path = os.path.join(root, "stage0", tag, "model_final.pth")
        os.makedirs(os.path.dirname(path))
        torch.save({"model": build_model(c).state_dict()}, path)
        sources.append(path)
    acfg = eval_model_cfg(cfg)
    experts = []
    for k, (tag, source) in enumerate(zip(TAGS, sources)):
        expert = build_expert_model(acfg, source)
        _randomise(expert, 10 + k)
        folder = os.path.join(root, "stage1", tag, "expert")
        save_expert_with_neck(expert, folder)
        experts.append(folder)
    gated = build_gated_model(acfg, sources, experts)
    _randomise(gated, 20, keys=("gate.weight",))
    state = gated.state_dict()
    state["heads.weight"] = torch.randn(PSEUDO_CLASSES, state["heads.weight"].shape[1])
    path = os.path.join(root, "stage2", "sage", "model_final.pth")
    os.makedirs(os.path.dirname(path))
    torch.save({"model": state, "iteration": 3}, path)
    return state


@pytest.fixture(scope="module")
def run(tmp_path_factory, repo_root):
    """(cfg, saved stage-2 state, data root) of a fake finished run; SynthReIDC generated under a tmp root."""
    data = tmp_path_factory.mktemp("datasets")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTREID_DATASETS", str(data))
        cfg = make_cfg(repo_root, tmp_path_factory.mktemp("run"))
        state = write_fake_run(cfg)
        yield cfg, state, data


def test_stage2_checkpoint_really_is_loaded(run):
    cfg, saved, _ = run
    paths = run_paths(cfg)
    assert paths.expert_names == TAGS and paths.gate == "sage"
    assert paths.stage2_checkpoint == os.path.join(cfg.OUTPUT_DIR, "stage2", "sage", "model_final.pth")
    model = load_stage2_model(eval_model_cfg(cfg), paths)
    state = model.state_dict()
    gates = [k for k in saved if k.endswith("gate.weight")]
    assert len(gates) == 8  # 2 blocks x (qkv, proj, fc1, fc2)
    for k in gates:
        assert saved[k].abs().sum() > 0  # perturbed: a freshly built SAGE gate is all zeros
        torch.testing.assert_close(state[k], saved[k], rtol=0, atol=0)
    assert state["heads.weight"].shape[0] == 1  # the pseudo-label classifier (7 rows) was skipped


def test_analyze_pipeline_run_writes_tables(run):
    cfg, _, _ = run
    res = analyze_pipeline_run(cfg, max_images=20, progress=False)
    out = os.path.join(cfg.OUTPUT_DIR, "analysis")
    assert res["output_dir"] == out and res["num_images"] == 20
    for name in ("gate_mean.csv", "gate_mean_per_layer.csv", "gate_correlation.csv", "cka.csv", "cka_per_layer.csv",
                 "summary.md", "gate_mean.png", "cka.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    with open(os.path.join(out, "gate_mean.csv")) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["module_type", *TAGS] and [r[0] for r in rows[1:]] == ["QKV", "Proj", "FC1", "FC2"]
    means = np.array([r[1:] for r in rows[1:]], dtype=float)
    np.testing.assert_allclose(means.sum(axis=1), 1.0, atol=1e-6)
    assert np.abs(means - 0.5).max() > 1e-3  # the trained (perturbed) gates, not the zero-initialised 1/K
    # the same numbers as the loaded model's gates over the same 20 query images
    model = load_stage2_model(eval_model_cfg(cfg), run_paths(cfg))
    weights = collect_gate_weights(model, query_loader(eval_model_cfg(cfg), "SynthReIDC", max_images=20),
                                   progress=False)
    np.testing.assert_allclose(means, mean_gate_table(weights, TAGS).by_type.values, atol=1e-9)
    # "mean" reduction: every layer's CKA is defined, block 0's QKV included
    assert np.isfinite(res["cka"].per_layer.values).all()


def test_missing_files_are_named_with_their_stage(run, tmp_path):
    cfg, _, _ = run
    stage2 = os.path.join(cfg.OUTPUT_DIR, "stage2", "sage", "model_final.pth")
    moved = str(tmp_path / "model_final.pth")
    shutil.move(stage2, moved)
    try:
        with pytest.raises(FileNotFoundError, match="stage 2") as err:
            run_paths(cfg)
        assert stage2 in str(err.value) and "stage0" not in str(err.value)
    finally:
        shutil.move(moved, stage2)
    with pytest.raises(FileNotFoundError) as err:
        run_paths(make_cfg_like(cfg, tmp_path / "empty"), gate="mole")
    msg = str(err.value)
    for tag in TAGS:
        assert os.path.join(str(tmp_path / "empty"), "stage0", tag, "model_final.pth") in msg
        assert os.path.join(str(tmp_path / "empty"), "stage1", tag, "expert", "adapter_config.json") in msg
    assert os.path.join(str(tmp_path / "empty"), "stage2", "mole", "model_final.pth") in msg
    assert "stage 0" in msg and "stage 1" in msg and "MoLE" in msg


def make_cfg_like(cfg, output_dir, **sage):
    c = cfg.clone()
    c.defrost()
    c.OUTPUT_DIR = str(output_dir)
    for k, v in sage.items():
        c.SAGE[k] = v
    c.freeze()
    return c


def test_given_weights_and_expert_dirs_come_first(run, tmp_path):
    cfg, _, _ = run
    own = run_paths(cfg)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(cfg.OUTPUT_DIR, elsewhere, ignore=shutil.ignore_patterns("analysis"))
    given_w = tuple(str(elsewhere / "stage0" / t / "model_final.pth") for t in TAGS)
    given_e = tuple(str(elsewhere / "stage1" / t / "expert") for t in TAGS)
    c = make_cfg_like(cfg, cfg.OUTPUT_DIR, SOURCE_WEIGHTS=given_w, EXPERT_DIRS=given_e)
    paths = run_paths(c)
    assert paths.source_weights == given_w and paths.expert_dirs == given_e
    assert paths.stage2_checkpoint == own.stage2_checkpoint  # stage 2 always lives in OUTPUT_DIR
    with pytest.raises(ValueError, match="SOURCE_WEIGHTS has 1 entries"):
        run_paths(make_cfg_like(cfg, cfg.OUTPUT_DIR, SOURCE_WEIGHTS=given_w[:1]))


def test_checkpoint_of_another_gate_kind_is_refused(run, tmp_path):
    cfg, _, _ = run
    c = make_cfg_like(cfg, tmp_path / "copy")
    shutil.copytree(cfg.OUTPUT_DIR, c.OUTPUT_DIR, ignore=shutil.ignore_patterns("analysis"))
    shutil.copytree(os.path.join(c.OUTPUT_DIR, "stage2", "sage"), os.path.join(c.OUTPUT_DIR, "stage2", "mole"))
    with pytest.raises(ValueError, match="gate 'mole'.*8 tensors differ in shape"):
        load_stage2_model(eval_model_cfg(c), run_paths(c, gate="mole"))


@pytest.mark.slow  # a fresh interpreter imports torch + fastreid + timm: ~10-40 s on 2 busy cores
def test_cli_runs(run, repo_root, tmp_path):
    cfg, _, data = run
    out = tmp_path / "cli"
    env = dict(os.environ, FASTREID_DATASETS=str(data))
    proc = subprocess.run([sys.executable, str(repo_root / "tools" / "analyze_sage.py"), "--config-file",
                           str(repo_root / "configs" / "sage" / "demo.yml"), "--output", str(out), "--max-images", "8",
                           *OPTS, "OUTPUT_DIR", cfg.OUTPUT_DIR],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"written to {out}" in proc.stdout and "Mean gate weight per module type" in proc.stdout
    with open(out / "gate_mean.csv") as f:
        rows = list(csv.reader(f))
    np.testing.assert_allclose(np.array([r[1:] for r in rows[1:]], dtype=float).sum(axis=1), 1.0, atol=1e-6)
