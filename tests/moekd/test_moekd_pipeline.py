"""``MoEKDPipeline`` end to end through ``tools/train_net.py`` (in-process) on a tiny synthetic domain with a
random-init tiny CLIP and a tiny random ALIGN: all five Table 5 rows (one epoch each), in-domain and cross-domain
rows, the expert cache written once and reused, the gate table and plot; a rerun trains nothing; the student's
checkpoint holds no expert or teacher weight and ``--eval-only`` reproduces its row."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from plugins.compat.checkpoint import load_checkpoint_file
from plugins.data.datasets.synthetic import SynthReIDBase
from plugins.data.synthetic import SynthConfig
from plugins.engine.stages import DONE_FILE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY_DOMAIN = SynthConfig(train_ids=8, test_ids=8, images_per_id=4, height=64, width=32, junk=2, distractors=2)
FOLDERS = ("base", "clip_concat", "align_average", "moe", "kd")
METRICS = ("mAP", "Rank-1", "Rank-5", "Rank-10")


def opts(output_dir) -> list:
    return ["MODEL.BACKBONE.CLIP.WEIGHTS", "", "MOEKD.ALIGN.WIDTH_COEFFICIENT", "0.25",
            "MOEKD.ALIGN.DEPTH_COEFFICIENT", "0.25", "MOEKD.FEAT_DIM", "256", "MOEKD.STUDENT.PROJ_DIM", "256",
            "MOEKD.CLIP.ADAPTER_HIDDEN", "128", "MOEKD.GATE.HIDDEN", "[64, 32]",
            "MOEKD.LADDER_OPTS", "['SOLVER.MAX_EPOCH', '1']", "MOEKD.STUDENT_OPTS", "['SOLVER.MAX_EPOCH', '1']",
            "SOLVER.MAX_EPOCH", "2", "SOLVER.IMS_PER_BATCH", "8", "SOLVER.CHECKPOINT_PERIOD", "1",
            "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]", "INPUT.PADDING.SIZE", "2",
            "DATALOADER.NUM_WORKERS", "0", "TEST.IMS_PER_BATCH", "32", "OUTPUT_DIR", str(output_dir)]


@pytest.fixture(scope="module")
def run(tmp_path_factory, train_net_session):
    out = tmp_path_factory.mktemp("moekd_pipeline")
    datasets = str(tmp_path_factory.mktemp("datasets"))
    with train_net_session(datasets, [(SynthReIDBase, "default_config", TINY_DOMAIN)]) as (main, mp):
        def run_once(*extra):
            return main(REPO / "configs" / "moekd" / "demo.yml", *extra, *opts(out))

        yield out, run_once(), run_once


def test_rows_folders_and_tables(run):
    out, rows, _ = run
    assert len(rows) == 10  # 5 rows x (in-domain A, cross-domain B)
    for name, row in rows.items():
        assert all(math.isfinite(row[m]) and 0 <= row[m] <= 100 for m in METRICS), (name, row)
        assert row["group"] == ("in-domain" if name.endswith("@ SynthReIDA") else "cross-domain")
    for folder in FOLDERS:
        done = json.loads((out / folder / DONE_FILE).read_text())
        assert set(done["metrics"]) == set(METRICS)
        assert (out / folder / "model_final.pth").is_file()
    assert (out / "results.md").read_text().startswith("# MoE-KD: SynthReIDA -> SynthReIDA, SynthReIDB")
    caches = list((out / "expert_cache").glob("experts_*.safetensors"))
    assert len(caches) == 2, caches  # [clip] for the concat row, [clip, align] shared by every other row
    gate = json.loads((out / "gate" / "gate_weights.json").read_text())
    assert set(gate) == {"SynthReIDA", "SynthReIDB"}
    for stats in gate.values():
        assert stats["mean_weight_clip"] + stats["mean_weight_align"] == pytest.approx(1.0, abs=1e-5)
        assert stats["top1_share_clip"] + stats["top1_share_align"] == pytest.approx(1.0, abs=1e-6)
    assert (out / "gate" / "gate_weights.png").stat().st_size > 1000


def test_checkpoints_hold_no_frozen_weights(run):
    out, _, _ = run
    student = load_checkpoint_file(str(out / "kd" / "model_final.pth"))["model"]
    assert not [k for k in student if k.startswith("teacher") or "expert" in k]
    assert any(k.startswith("backbone.") for k in student) and "projection.0.weight" in student
    teacher = load_checkpoint_file(str(out / "moe" / "model_final.pth"))["model"]
    assert not [k for k in teacher if "experts" in k]
    assert "mixture.gate.mlp.0.weight" in teacher and "mixture.adapters.align.weight" in teacher


def test_rerun_trains_nothing(run):
    out, rows, run_once = run
    stamps = {f: (out / f / DONE_FILE).stat().st_mtime_ns for f in FOLDERS}
    assert run_once() == rows
    assert stamps == {f: (out / f / DONE_FILE).stat().st_mtime_ns for f in FOLDERS}


def test_eval_only_reproduces_the_student_row(run):
    out, rows, run_once = run
    res = run_once("--eval-only", "MODEL.META_ARCHITECTURE", "MoEKDStudent", "DATASETS.TESTS", "('SynthReIDA',)",
                   "MODEL.WEIGHTS", str(out / "kd" / "model_final.pth"))
    row = rows["+ KD (ResNet-18 student) @ SynthReIDA"]
    assert res["mAP"] == pytest.approx(row["mAP"], abs=1e-6)
