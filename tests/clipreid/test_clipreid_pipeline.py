"""``CLIPReIDPipeline`` end to end through ``tools/train_net.py`` (its ``main``, in-process) on a tiny synthetic
domain with a random-init tiny CLIP: stage 1 (prompts) -> stage 2 (image encoder) -> the two ablations ->
results table; a rerun trains nothing; a deleted stage is redone, alone; an interrupted stage 1 resumes from its
checkpoint; ``--eval-only`` with the stage-2 checkpoint reproduces the CLIP-ReID row."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from fastreid.engine import DefaultTrainer
from safetensors.torch import load_file

from plugins.engine.clipreid_trainers import FEATURES_FILE, PROMPTS_FILE, CLIPReIDPromptTrainer
from plugins.data.datasets.synthetic import SynthReIDBase
from plugins.data.synthetic import SynthConfig
from plugins.engine.stages import DONE_FILE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY_DOMAIN = SynthConfig(train_ids=16, test_ids=8, images_per_id=4, height=64, width=32, junk=2, distractors=2)
ROWS = {"frozen CLIP (no training)": ("reference", "stage1"), "CLIP-ReID": ("CLIP-ReID", "stage2"),
        "CLIP-ReID w/o i2t loss": ("ablation", "stage2_no_i2t"), "image-only baseline": ("ablation", "image_only")}
METRICS = ("mAP", "Rank-1", "Rank-5", "Rank-10")


def opts(output_dir) -> list:
    return ["MODEL.BACKBONE.CLIP.WEIGHTS", "", "MODEL.BACKBONE.PRETRAIN", "False",  # random init: no pre-training
            "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]", "INPUT.PADDING.SIZE", "2",
            "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "16", "SOLVER.MAX_EPOCH", "1",
            "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "[1]",
            "TEST.EVAL_PERIOD", "1", "CLIPREID.STAGE1.EPOCHS", "4", "CLIPREID.STAGE1.IMS_PER_BATCH", "16",
            "CLIPREID.STAGE1.WARMUP_EPOCHS", "1", "CLIPREID.STAGE1.CHECKPOINT_PERIOD", "2",
            "OUTPUT_DIR", str(output_dir)]


@pytest.fixture(scope="module")
def run(tmp_path_factory, train_net_session):
    out = tmp_path_factory.mktemp("clipreid_pipeline")
    datasets = str(tmp_path_factory.mktemp("datasets"))
    with train_net_session(datasets, [(SynthReIDBase, "default_config", TINY_DOMAIN)]) as (main, mp):
        def run_once(*extra):
            return main(REPO / "configs" / "clipreid" / "demo.yml", *extra, *opts(out))

        yield out, run_once(), run_once, mp


def test_rows_tables_and_folders(run):
    out, rows, _, _ = run
    assert list(rows) == list(ROWS)
    for name, (group, folder) in ROWS.items():
        row = rows[name]
        assert row["group"] == group
        assert all(math.isfinite(row[m]) and 0 <= row[m] <= 100 for m in METRICS), (name, row)
        assert row["Rank-1"] <= row["Rank-5"] <= row["Rank-10"]
        done = json.loads((out / folder / DONE_FILE).read_text())
        assert done["metrics"] == {m: row[m] for m in METRICS}
    assert json.loads((out / "results.json").read_text()) == rows
    assert (out / "results.md").read_text().startswith("# CLIP-ReID: SynthReIDA -> SynthReIDA")
    for folder in ("stage2", "stage2_no_i2t", "image_only"):
        assert (out / folder / "model_final.pth").is_file()
    feats = load_file(str(out / "stage1" / FEATURES_FILE))
    assert feats["features"].shape == (64, 128) and sorted(set(feats["labels"].tolist())) == list(range(16))
    prompts = load_file(str(out / "stage1" / PROMPTS_FILE))
    assert prompts["cls_ctx"].shape == (16, 4, 128) and prompts["token_prefix"].shape == (1, 5, 128)


def test_stage2_used_the_learned_prompts(run):
    out, _, _, _ = run
    from plugins.compat.checkpoint import load_checkpoint_file

    state = load_checkpoint_file(str(out / "stage2" / "model_final.pth"))["model"]
    prompts = load_file(str(out / "stage1" / PROMPTS_FILE))
    assert torch.equal(state["prompt_learner.cls_ctx"], prompts["cls_ctx"])  # frozen in stage 2, saved as loaded
    assert not torch.equal(prompts["cls_ctx"], torch.zeros_like(prompts["cls_ctx"]))


def test_rerun_trains_nothing_and_deleted_stage_is_redone(run, monkeypatch):
    out, rows, run_once, _ = run
    trained = []
    train = DefaultTrainer.train

    def spy(trainer):
        trained.append(trainer.cfg.OUTPUT_DIR)
        return train(trainer)

    monkeypatch.setattr(DefaultTrainer, "train", spy)
    prompt_train = CLIPReIDPromptTrainer.train
    monkeypatch.setattr(CLIPReIDPromptTrainer, "train", lambda self: (trained.append("stage1"), prompt_train(self))[1])
    assert run_once() == rows and trained == []
    shutil.rmtree(out / "stage2_no_i2t")
    run_once()
    assert trained == [str(out / "stage2_no_i2t")]


def test_interrupted_stage1_resumes_from_its_checkpoint(run, monkeypatch):
    out, rows, run_once, _ = run
    stage1 = out / "stage1"
    (stage1 / DONE_FILE).unlink()
    (stage1 / PROMPTS_FILE).unlink()
    # the checkpoint after epoch 4 is the last; pretend the run was killed after epoch 2's checkpoint
    state = torch.load(stage1 / "prompt_training_last.pth", weights_only=True)
    state["epoch"] = 2
    torch.save(state, stage1 / "prompt_training_last.pth")
    epochs = []
    original = CLIPReIDPromptTrainer.train

    def spy(self):
        epochs.append((self.start_epoch, self.max_epoch))
        return original(self)

    monkeypatch.setattr(CLIPReIDPromptTrainer, "train", spy)
    run_once()
    assert epochs == [(2, 4)] and (stage1 / PROMPTS_FILE).is_file() and (stage1 / DONE_FILE).is_file()


def test_eval_only_reproduces_the_row(run):
    out, rows, run_once, _ = run
    results = run_once("--eval-only", "MODEL.WEIGHTS", str(out / "stage2" / "model_final.pth"))
    assert results["mAP"] == pytest.approx(rows["CLIP-ReID"]["mAP"], abs=1e-6)
