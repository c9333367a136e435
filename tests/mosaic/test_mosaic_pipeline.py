"""``MoSAICPipeline`` end to end through ``tools/train_net.py`` (in-process) on a tiny synthetic attribute domain with
a random-init tiny CLIP: CLIP-ReID stages -> MoSAIC -> predicted-router row -> sweeps in both modes -> importance
reports; the "none" configuration is the CLIP-ReID model exactly; a rerun trains and evaluates nothing; a sweep row
removed from results.csv (a killed sweep) is evaluated again, alone; ``--eval-only`` reproduces the oracle row."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from fastreid.engine import DefaultTrainer

from plugins.data.datasets.synthetic_attribute import SynthReIDAttrBase
from plugins.data.synthetic import SynthConfig
from plugins.mosaic.pipeline import MoSAICPipeline

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY_DOMAIN = SynthConfig(train_ids=12, test_ids=8, images_per_id=4, height=64, width=32, junk=1, distractors=2)
ROWS = ["frozen CLIP (no training)", "CLIP-ReID", "MoSAIC-ReID (oracle router)", "MoSAIC-ReID (predicted router)"]


def opts(output_dir) -> list:
    return ["MODEL.BACKBONE.CLIP.WEIGHTS", "", "MODEL.BACKBONE.PRETRAIN", "False",
            "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]", "INPUT.PADDING.SIZE", "2",
            "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "16", "SOLVER.MAX_EPOCH", "1",
            "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "[1]",
            "CLIPREID.STAGE1.EPOCHS", "2", "CLIPREID.STAGE1.IMS_PER_BATCH", "16", "CLIPREID.STAGE1.WARMUP_EPOCHS", "1",
            "MOSAIC.STAGE_OPTS", "['SOLVER.OPT', 'AdamW', 'SOLVER.BASE_LR', '0.001', 'SOLVER.MAX_EPOCH', '2', "
                                 "'SOLVER.STEPS', '[2]']",
            "MOSAIC.SWEEP.KINDS", "['all', 'none', 'single']", "MOSAIC.SWEEP.RETRAIN", "['all', 'only gender']",
            "MOSAIC.SWEEP.N_ESTIMATORS", "20", "MOSAIC.SWEEP.N_REPEATS", "2", "OUTPUT_DIR", str(output_dir)]


@pytest.fixture(scope="module")
def run(tmp_path_factory, train_net_session):
    out = tmp_path_factory.mktemp("mosaic_pipeline")
    datasets = str(tmp_path_factory.mktemp("datasets"))
    with train_net_session(datasets, [(SynthReIDAttrBase, "default_config", TINY_DOMAIN)]) as (main, _):
        def run_once(*extra):
            return main(REPO / "configs" / "mosaic" / "demo.yml", *extra, *opts(out))

        yield out, run_once(), run_once


def _sweep(path):
    with open(path, newline="") as f:
        return {r["configuration"]: r for r in csv.DictReader(f)}


def test_rows_files_and_the_none_configuration(run):
    out, rows, _ = run
    assert list(rows) == ROWS
    sweep = _sweep(out / "sweep" / "results.csv")
    assert list(sweep) == ["all", "none"] + [f"only {a}" for a in (
        "gender", "hair", "up", "down", "clothes", "hat", "backpack", "bag", "handbag", "age", "upper_colour",
        "lower_colour")]
    # every expert off is the CLIP-ReID stage-2 model itself; every expert on is the MoSAIC row
    assert float(sweep["none"]["mAP"]) == pytest.approx(rows["CLIP-ReID"]["mAP"], abs=1e-4)
    assert float(sweep["all"]["mAP"]) == pytest.approx(rows["MoSAIC-ReID (oracle router)"]["mAP"], abs=1e-4)
    retrained = _sweep(out / "sweep_retrain" / "results.csv")
    assert list(retrained) == ["all", "only gender"]
    assert (out / "sweep_retrain" / "only_gender" / "model_final.pth").is_file()
    for name in ("glm_mAP.csv", "importance_mAP.csv", "glm_R-1.csv", "shap_mAP.png", "report.md"):
        assert (out / "importance" / name).is_file(), name
    assert not (out / "importance_retrain").exists()  # two retrained configurations: too few to analyse
    assert "configurations in both modes" in (out / "sweep_modes.md").read_text()
    assert "Spearman" in (out / "entropy_vs_importance.md").read_text()
    assert "| gender" in (out / "attribute_accuracy.md").read_text()


def test_rerun_does_nothing_and_a_removed_row_is_evaluated_alone(run, monkeypatch):
    out, rows, run_once = run
    calls = []
    monkeypatch.setattr(DefaultTrainer, "train", lambda self: calls.append(("train", self.cfg.OUTPUT_DIR)))
    test = MoSAICPipeline.evaluate
    monkeypatch.setattr(MoSAICPipeline, "evaluate",
                        lambda self, *a, **k: calls.append(("eval", k.get("include"))) or test(self, *a, **k))
    path = out / "sweep" / "results.csv"
    before = path.read_text()
    assert run_once() == rows and calls == []
    lines = before.splitlines(keepends=True)
    removed = lines.pop(3)  # "only gender"
    path.write_text("".join(lines))
    run_once()
    assert calls == [("eval", ("gender",))]
    assert sorted(path.read_text().splitlines()) == sorted(before.splitlines()) and removed.startswith("only gender")


def test_eval_only_reproduces_the_oracle_row(run):
    out, rows, run_once = run
    results = run_once("--eval-only", "MODEL.WEIGHTS", str(out / "mosaic" / "model_final.pth"))
    assert results["mAP"] == pytest.approx(rows["MoSAIC-ReID (oracle router)"]["mAP"], abs=1e-6)
