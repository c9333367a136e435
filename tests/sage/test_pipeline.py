"""``SAGEPipeline`` end to end through ``tools/train_net.py`` (its ``main``, in-process) on tiny synthetic domains:
K = 2 sources (A, B) -> target C, every stage a few iterations of a 1-block width-32 ViT.

Checked: every results row (finite, in [0, 100], CMC monotone) in results.json / .md / .csv; the folder layout
and what each stage wrote (done.json = its row, the experts in the gated checkpoints); the pseudo-labels the hook
reported; a second run on the same OUTPUT_DIR builds, trains and evaluates nothing and returns the same rows; after
deleting one stage's done.json, one stage folder and one static row, the rerun redoes exactly those.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from fastreid.engine import DefaultTrainer, default_argument_parser

from plugins.compat.checkpoint import load_checkpoint_file
from plugins.data.datasets.synthetic import SynthReIDBase
from plugins.data.synthetic import SynthConfig
from plugins.sage.builders import load_model_state
from plugins.sage.pipeline import DONE_FILE
from plugins.tuners.expert_bank import load_expert, lora_factors

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# A quarter of the default domain: 64 train images (16 ids x 4), 24 queries; 4 train iterations per epoch.
TINY_DOMAIN = SynthConfig(train_ids=16, test_ids=8, images_per_id=4, height=64, width=32, junk=2, distractors=2)
IMS_PER_BATCH, NUM_INSTANCE = 16, 4  # P = 4 pseudo-identities per batch

SOURCES, TAGS = ("SynthReIDA", "SynthReIDB"), ("a", "b")
ROWS = {  # row -> group, in the pipeline's order (plugins.sage.rows.ROWS)
    "source-only: SynthReIDA": "source model", "source-only: SynthReIDB": "source model",
    "Blend + ViT": "source model", "Avg + ViT": "source model",
    "expert: SynthReIDA": "single expert", "expert: SynthReIDB": "single expert",
    "Blend + ViT (LoRA)": "single expert", "Avg + ViT (LoRA)": "single expert",
    "LoRA-Avg": "static merge", "TIES": "static merge", "KnOTS-TA": "static merge",
    "LoRAHub": "learned merge", "MoLE": "learned merge", "SAGE": "learned merge",
    "SAGE w/o SynthReIDA": "leave-one-out", "SAGE w/o SynthReIDB": "leave-one-out",
    "ViT (target labels)": "upper bound (target labels)",
}
STAGE_ROWS = {  # stage folder -> its results row
    "stage0/a": "source-only: SynthReIDA", "stage0/b": "source-only: SynthReIDB",
    "stage0/blend": "Blend + ViT",
    "stage1/a": "expert: SynthReIDA", "stage1/b": "expert: SynthReIDB",
    "stage1/blend": "Blend + ViT (LoRA)", "stage1/avg": "Avg + ViT (LoRA)",
    "stage2/mole": "MoLE", "stage2/sage": "SAGE",
    "stage2/without_a": "SAGE w/o SynthReIDA", "stage2/without_b": "SAGE w/o SynthReIDB",
    "stage0/target_supervised": "ViT (target labels)",
}
METRICS = ("mAP", "Rank-1", "Rank-5", "Rank-10")


def opts(output_dir) -> list:
    stage = ["SOLVER.MAX_EPOCH", "1", "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.IMS_PER_BATCH", str(IMS_PER_BATCH),
             "SOLVER.WARMUP_ITERS", "0"]
    return [
        "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.TIMM_VIT.DEPTH", "1", "MODEL.BACKBONE.TIMM_VIT.EMBED_DIM", "32",
        "MODEL.BACKBONE.TIMM_VIT.NUM_HEADS", "2", "MODEL.BACKBONE.FEAT_DIM", "32",
        "DATALOADER.NUM_WORKERS", "0", "DATALOADER.NUM_INSTANCE", str(NUM_INSTANCE),
        "SOLVER.IMS_PER_BATCH", str(IMS_PER_BATCH), "SOLVER.MAX_EPOCH", "1", "SOLVER.CHECKPOINT_PERIOD", "1",
        "SOLVER.WARMUP_ITERS", "0", "TEST.IMS_PER_BATCH", "64",
        # 64 target images: small k-reciprocal neighbourhoods; eps / min_samples leave >= P clusters
        "PLUGINS.PSEUDO_LABEL.K1", "6", "PLUGINS.PSEUDO_LABEL.K2", "3", "PLUGINS.PSEUDO_LABEL.EPS", "0.5",
        "PLUGINS.PSEUDO_LABEL.MIN_SAMPLES", "2", "PLUGINS.PSEUDO_LABEL.FEATURE_BATCH", "64",
        "SAGE.SOURCES", str(SOURCES), "SAGE.SOURCE_TAGS", str(TAGS), "SAGE.PRETRAIN_DATASETS", "()",
        "SAGE.STAGE1_OPTS", str(stage), "SAGE.STAGE2_OPTS", str(stage + ["SOLVER.BASE_LR", "0.01"]),
        "SAGE.BASELINES", '("avg_vit", "blend_vit_lora", "avg_vit_lora", "lora_avg", "ties", "knots_ta", "lorahub", '
                          '"mole", "supervised")', "SAGE.BLEND", "True",
        "SAGE.LEAVE_ONE_OUT", "True", "SAGE.LORAHUB.BUDGET", "6", "SAGE.LORAHUB.NUM_IMAGES", "32",
        "OUTPUT_DIR", str(output_dir),
    ]


class Spy:
    """Records which stage folders built a trainer, trained, and how many models were evaluated."""

    def __init__(self, monkeypatch):
        self.built, self.trained, self.evaluated = [], [], 0
        init, train, test = DefaultTrainer.__init__, DefaultTrainer.train, DefaultTrainer.__dict__["test"].__func__

        def spy_init(trainer, cfg):
            self.built.append(cfg.OUTPUT_DIR)
            init(trainer, cfg)

        def spy_train(trainer):
            self.trained.append(trainer.cfg.OUTPUT_DIR)
            return train(trainer)

        def spy_test(cls, cfg, model):
            self.evaluated += 1
            return test(cls, cfg, model)

        monkeypatch.setattr(DefaultTrainer, "__init__", spy_init)
        monkeypatch.setattr(DefaultTrainer, "train", spy_train)
        monkeypatch.setattr(DefaultTrainer, "test", classmethod(spy_test))


@pytest.fixture(scope="module")
def run(tmp_path_factory, train_net_session):
    """``run()`` runs tools/train_net.py's ``main`` on one OUTPUT_DIR and returns the rows; the first run is done."""
    out = tmp_path_factory.mktemp("sage_pipeline")
    datasets = str(tmp_path_factory.mktemp("datasets"))
    with train_net_session(datasets, [(SynthReIDBase, "default_config", TINY_DOMAIN)]) as (main, _):
        def run_once():
            return main(REPO / "configs" / "sage" / "demo.yml", *opts(out))

        yield out, run_once(), run_once


def stage_files(out: Path) -> dict:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns
            for p in sorted(out.glob("stage*/**/*")) if p.is_file()}


def test_rows_and_tables(run):
    out, rows, _ = run
    assert list(rows) == list(ROWS)
    for name, row in rows.items():
        assert row["group"] == ROWS[name], name
        values = [row[m] for m in METRICS]
        assert all(math.isfinite(v) and 0 <= v <= 100 for v in values), (name, row)
        assert row["Rank-1"] <= row["Rank-5"] <= row["Rank-10"], (name, row)
        assert row["mAP"] > 0, (name, row)
    with open(out / "results.json") as f:
        assert json.load(f) == rows
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0] == "group,method,mAP,Rank-1,Rank-5,Rank-10"
    assert [line.split(",")[1] for line in csv_lines[1:]] == list(ROWS)
    for line in csv_lines[1:]:
        group, name, *values = line.split(",")
        assert group == ROWS[name] and [float(v) for v in values] == [rows[name][m] for m in METRICS], name
    md = (out / "results.md").read_text()
    assert md.startswith("# SAGE-reID: SynthReIDA + SynthReIDB -> SynthReIDC")
    table = {cells[1]: [float(v) for v in cells[2:]] for cells in
             ([c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()[4:])}
    assert list(table) == list(ROWS)
    for name, values in table.items():
        assert values == pytest.approx([rows[name][m] for m in METRICS], abs=0.005 + 1e-9), name


def test_folder_layout(run):
    out, rows, _ = run
    assert not (out / "pretrain").exists()  # SAGE.PRETRAIN_DATASETS is empty
    for stage, row in STAGE_ROWS.items():
        done = json.loads((out / stage / DONE_FILE).read_text())
        assert done["metrics"] == {m: rows[row][m] for m in METRICS}, stage
        assert (out / stage / "log.txt").is_file()
        if not stage.startswith("stage1"):
            assert (out / stage / "model_final.pth").is_file(), stage
    # Avg + ViT (LoRA) started from the mean of the two sources, written once (classifier excluded)
    mean = load_model_state(str(out / "stage0" / "avg" / "model.safetensors"))
    sources = [load_model_state(str(out / "stage0" / t / "model_final.pth")) for t in TAGS]
    assert "heads.weight" not in mean and set(mean) == set(sources[0]) - {"heads.weight"}
    key = "backbone.vit.blocks.0.mlp.fc1.weight"
    torch.testing.assert_close(mean[key], (sources[0][key] + sources[1][key]) / 2)
    for tag in TAGS + ("blend", "avg"):
        expert = out / "stage1" / tag / "expert"
        assert sorted(os.listdir(expert)) == ["adapter_config.json", "adapter_model.safetensors", "neck.safetensors"]
        factors = lora_factors(load_expert(str(expert)))
        assert sorted(factors) == [f"blocks.0.{m}" for m in ("attn.proj", "attn.qkv", "mlp.fc1", "mlp.fc2")]
        a, b, scaling = factors["blocks.0.mlp.fc1"]
        assert a.shape == (4, 32) and b.shape == (128, 4) and scaling == 16.0 / 4  # demo.yml: rank 4, alpha 16
        assert b.abs().max() > 0  # trained away from peft's zero init
    coefficients = json.loads((out / "lorahub_coefficients.json").read_text())
    assert sorted(coefficients) == list(TAGS) and all(math.isfinite(c) for c in coefficients.values())
    # SAGE.ANALYZE (default on): the analyses of the SAGE model follow the results table
    for name in ("summary.md", "gate_mean.csv", "gate_correlation.csv", "cka.csv"):
        assert (out / "analysis" / name).is_file(), name
    assert sorted(p.suffix for p in (out / "analysis").glob("*.png"))[:1] == [".png"]


def test_gated_checkpoints_hold_the_right_experts(run):
    """stage2/sage and mole gate both experts (a, b in order); without_<tag> keeps only the other one."""
    out, _, _ = run
    experts = {t: lora_factors(load_expert(str(out / "stage1" / t / "expert")))["blocks.0.attn.qkv"] for t in TAGS}
    kept = {"sage": TAGS, "mole": TAGS, "without_a": ("b",), "without_b": ("a",)}
    for folder, tags in kept.items():
        state = load_checkpoint_file(str(out / "stage2" / folder / "model_final.pth"))["model"]
        lora_a, lora_b = state["backbone.vit.blocks.0.attn.qkv.lora_A"], state["backbone.vit.blocks.0.attn.qkv.lora_B"]
        assert lora_a.shape[0] == len(tags), folder
        for k, tag in enumerate(tags):
            assert torch.equal(lora_a[k], experts[tag][0]) and torch.equal(lora_b[k], experts[tag][1]), folder
        assert "backbone.vit.blocks.0.attn.qkv.gate.weight" in state


def test_pseudo_labels_reported_enough_clusters(run):
    """Every pseudo-labelled stage logged a clustering of the 64 target images with >= P clusters."""
    out, _, _ = run
    for stage in [s for s in STAGE_ROWS if not s.startswith("stage0")]:
        log = (out / stage / "log.txt").read_text()
        table = re.findall(r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|", log, re.M)
        assert table, f"{stage}: no pseudo-label table in log.txt"
        for epoch, images, clusters, outliers in table:
            assert int(images) == 64 and int(clusters) >= IMS_PER_BATCH // NUM_INSTANCE, (stage, table)
            assert int(outliers) < 64


def test_rerun_trains_and_evaluates_nothing(run, monkeypatch):
    out, first, run_once = run
    before = stage_files(out)
    spy = Spy(monkeypatch)
    assert run_once() == first
    assert spy.built == [] and spy.trained == [] and spy.evaluated == 0
    assert stage_files(out) == before
    assert json.loads((out / "results.json").read_text()) == first


def test_rerun_redoes_only_what_was_deleted(run, monkeypatch):
    """MoLE lost its done.json (its final checkpoint is there: evaluated again, not retrained), without_b lost its
    folder (retrained), TIES and Avg + ViT lost their rows (re-measured); nothing else is touched."""
    out, first, run_once = run
    (out / "stage2" / "mole" / DONE_FILE).unlink()
    shutil.rmtree(out / "stage2" / "without_b")
    results = json.loads((out / "results.json").read_text())
    for row in ("MoLE", "SAGE w/o SynthReIDB", "TIES", "Avg + ViT"):
        del results[row]
    (out / "results.json").write_text(json.dumps(results))
    before = {k: v for k, v in stage_files(out).items() if not k.startswith("stage2/mole/")}

    spy = Spy(monkeypatch)
    rows = run_once()
    assert spy.built == [str(out / "stage2" / "mole"), str(out / "stage2" / "without_b")]
    assert spy.trained == [str(out / "stage2" / "without_b")]
    assert spy.evaluated == 4  # Avg + ViT, TIES, the MoLE checkpoint, the retrained without_b
    assert list(rows) == list(ROWS)
    for name in ROWS:
        if name != "SAGE w/o SynthReIDB":
            assert rows[name] == first[name], name  # same models, same scores
    assert all(math.isfinite(rows["SAGE w/o SynthReIDB"][m]) for m in METRICS)
    for stage in ("stage2/mole", "stage2/without_b"):
        assert json.loads((out / stage / DONE_FILE).read_text())["metrics"] == \
            {m: rows[STAGE_ROWS[stage]][m] for m in METRICS}
    after = stage_files(out)
    assert {k: after[k] for k in before} == before  # every other stage file untouched
    assert json.loads((out / "results.json").read_text()) == rows


def test_eval_only_reproduces_the_sage_row(run, monkeypatch, train_net_loader):
    """``train_net.py --eval-only`` with the run's config rebuilds the trained stage-2 model from OUTPUT_DIR."""
    out, first, _ = run
    train_net = train_net_loader()
    monkeypatch.setattr(train_net, "default_setup", lambda cfg, args: None)
    args = default_argument_parser().parse_args(
        ["--config-file", str(REPO / "configs" / "sage" / "demo.yml"), "--eval-only", *opts(out)])
    results = train_net.main(args)
    assert {m: results[m] for m in METRICS} == pytest.approx({m: first["SAGE"][m] for m in METRICS}, abs=1e-6)


def test_given_sources_and_experts_skip_stages_0_and_1(run, monkeypatch, tmp_path, train_net_loader):
    """SAGE.SOURCE_WEIGHTS / SAGE.EXPERT_DIRS from another run: nothing is trained before stage 2, and the source,
    expert and LoRA-Avg rows re-measured from the files equal the first run's (experts are portable)."""
    out, first, _ = run
    train_net = train_net_loader()
    monkeypatch.setattr(train_net, "default_setup", lambda cfg, args: None)
    sources = tuple(str(out / "stage0" / t / "model_final.pth") for t in TAGS)
    experts = tuple(str(out / "stage1" / t / "expert") for t in TAGS)
    given = tmp_path / "given"
    args = default_argument_parser().parse_args(
        ["--config-file", str(REPO / "configs" / "sage" / "demo.yml"), *opts(given),
         "SAGE.SOURCE_WEIGHTS", str(sources), "SAGE.EXPERT_DIRS", str(experts), "SAGE.BASELINES", '("lora_avg",)',
         "SAGE.BLEND", "False", "SAGE.LEAVE_ONE_OUT", "False", "SAGE.ANALYZE", "False"])
    spy = Spy(monkeypatch)
    rows = train_net.main(args)
    assert spy.built == [str(given / "stage2" / "sage")]  # only the gate training builds a trainer
    assert not (given / "stage0").exists() and not (given / "stage1").exists()
    for name in [f"source-only: {s}" for s in SOURCES] + [f"expert: {s}" for s in SOURCES] + ["LoRA-Avg"]:
        assert {m: rows[name][m] for m in METRICS} == pytest.approx(
            {m: first[name][m] for m in METRICS}, abs=1e-6), name
