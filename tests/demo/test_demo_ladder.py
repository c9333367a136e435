"""``DeMoLadder`` end to end through ``tools/train_net.py`` (in-process) on a tiny procedural RGBNT201-layout domain
with a random-init tiny CLIP: steps A and E train (D = E's model on the moe feature), the results table and the
missing-modality table are written; a rerun trains nothing; ``tools/demo_missing_modality.py`` on step E's
checkpoint reproduces the ladder's missing-modality table."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from plugins.data.datasets.synthetic_multimodal import SynthRGBNT201
from plugins.data.synthetic import SynthConfig
from plugins.engine.stages import DONE_FILE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY = SynthConfig(train_ids=8, test_ids=4, images_per_id=4, num_cameras=4, height=64, width=32)
ROWS = ["A baseline (CLS)", "D + ATMoE (f only)", "E + ATMoE (concat)"]
SETTINGS = ["Full", "M(R)", "M(N)", "M(T)", "M(RN)", "M(RT)", "M(NT)", "Average"]


def opts(out) -> list:
    return ["MODEL.BACKBONE.CLIP.WEIGHTS", "", "MODEL.BACKBONE.PRETRAIN", "False", "INPUT.SIZE_TRAIN", "[64, 32]",
            "INPUT.SIZE_TEST", "[64, 32]", "INPUT.PADDING.SIZE", "2", "DATALOADER.NUM_WORKERS", "0",
            "SOLVER.IMS_PER_BATCH", "16", "SOLVER.MAX_EPOCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1",
            "DEMO.SOLVER.WARMUP_EPOCHS", "1", "TEST.EVAL_PERIOD", "2", "TEST.IMS_PER_BATCH", "32",
            "DEMO.LADDER.STEPS", '["A", "D", "E"]', "OUTPUT_DIR", str(out)]


@pytest.fixture(scope="module")
def run(tmp_path_factory, train_net_session):
    out = tmp_path_factory.mktemp("demo_ladder")
    datasets = str(tmp_path_factory.mktemp("datasets"))
    with train_net_session(datasets, [(SynthRGBNT201, "default_config", TINY)]) as (main, mp):
        def run_once():
            return main(REPO / "configs" / "demo" / "demo.yml", *opts(out))

        yield out, run_once(), run_once, datasets


def test_ladder_rows_and_tables(run):
    out, results, _, _ = run
    rows = results["ladder"]
    assert list(rows) == ROWS
    for name, row in rows.items():
        assert all(math.isfinite(row[m]) and 0 <= row[m] <= 100 for m in ("mAP", "Rank-1", "Rank-5", "Rank-10"))
    assert rows["D + ATMoE (f only)"] != rows["E + ATMoE (concat)"]  # another test feature of the same model
    for step in ("A", "E"):
        assert (out / f"step_{step}" / DONE_FILE).is_file() and (out / f"step_{step}" / "model_final.pth").is_file()
    assert not (out / "step_D").exists()  # D is E's model
    assert (out / "results.md").read_text().count("|") > 10
    with open(out / "missing_modality.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["setting"] for r in table] == SETTINGS
    missing = results["missing"]
    assert missing["Full"]["mAP"] == pytest.approx(rows["E + ATMoE (concat)"]["mAP"])
    avg = sum(missing[s]["mAP"] for s in SETTINGS[1:-1]) / 6
    assert missing["Average"]["mAP"] == pytest.approx(avg)


def test_rerun_trains_nothing(run):
    out, first, run_once, _ = run
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("step_*/model_final.pth")}
    again = run_once()
    assert again["ladder"] == first["ladder"]
    assert {p: p.stat().st_mtime_ns for p in out.glob("step_*/model_final.pth")} == stamps
    assert json.loads((out / "step_E" / DONE_FILE).read_text())["metrics"]["mAP"] == first["ladder"][ROWS[2]]["mAP"]


def test_missing_modality_command_reproduces_the_table(run, tmp_path, monkeypatch):
    out, results, _, datasets = run
    monkeypatch.setenv("FASTREID_DATASETS", datasets)
    monkeypatch.setattr("fastreid.data.build._root", datasets)
    monkeypatch.setattr(SynthRGBNT201, "default_config", TINY)
    spec = importlib.util.spec_from_file_location("demo_missing_tool", REPO / "tools" / "demo_missing_modality.py")
    tool = importlib.util.module_from_spec(spec)
    sys.modules["demo_missing_tool"] = tool
    spec.loader.exec_module(tool)
    assert tool.main(["--config-file", str(REPO / "configs" / "demo" / "demo.yml"), "--output-dir", str(tmp_path),
                      *opts(out)[:-2], "MODEL.WEIGHTS", str(out / "step_E" / "model_final.pth")]) == 0
    with open(tmp_path / "missing_modality.csv") as f:
        got = {r["setting"]: float(r["mAP"]) for r in csv.DictReader(f)}
    assert got == pytest.approx({k: v["mAP"] for k, v in results["missing"].items()}, abs=1e-3)
