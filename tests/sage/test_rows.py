"""The one table of results rows (plugins.sage.rows) and the run layout (plugins.sage.layout) that every SAGE
module reads: names unique, every static merge a known merge method, every gate a registered router, every
SAGE.BASELINES default a known row, the stage folders distinct."""
import os

import pytest

import plugins  # noqa: F401  (registries)
from plugins.config import import_methods
from plugins.registry import ROUTER_REGISTRY
from plugins.sage.config import DEFAULT_BASELINES, add_sage_config
from plugins.sage.layout import RESERVED_TAGS, TRAINED_GATES, RunLayout, check_tags
from plugins.sage.rows import (BASELINES, GATES, KINDS, ROWS, STATIC_MERGES, gate_router, row, row_name)
from plugins.tuners.merge import MERGE_METHODS

import_methods()


def test_table_is_consistent():
    assert len({r.key for r in ROWS}) == len(ROWS) and len({r.name for r in ROWS}) == len(ROWS)
    assert all(r.kind in KINDS for r in ROWS)
    assert BASELINES == ("avg_vit", "blend_vit_lora", "avg_vit_lora", "lora_avg", "task_arithmetic", "ties", "dare",
                         "knots_ta", "knots_ties", "tsv_merge", "lorahub", "mole", "supervised")
    assert STATIC_MERGES == ("lora_avg", "task_arithmetic", "ties", "dare", "knots_ta", "knots_ties", "tsv_merge")
    assert all(row(k).merge in MERGE_METHODS for k in STATIC_MERGES)
    assert {row(k).merge_options["combination"] for k in ("knots_ta", "knots_ties")} == {"task_arithmetic", "ties"}
    folders = [r.folder for r in ROWS if r.folder]
    assert len(set(folders)) == len(folders)
    assert set(DEFAULT_BASELINES) < set(BASELINES) and "supervised" not in DEFAULT_BASELINES


def test_display_names_and_groups():
    assert [row_name(k) for k in ("avg_vit", "avg_vit_lora", "blend_vit_lora", "knots_ta", "knots_ties")] == \
        ["Avg + ViT", "Avg + ViT (LoRA)", "Blend + ViT (LoRA)", "KnOTS-TA", "KnOTS-TIES"]
    assert row("supervised").group == "upper bound (target labels)" and row("supervised").kind == "upper bound"
    assert row_name("source", "Market") == "source-only: Market"
    with pytest.raises(ValueError, match="per source"):
        row_name("expert")
    with pytest.raises(KeyError, match="unknown results row 'knots'"):
        row("knots")  # one KnOTS row became knots_ta / knots_ties


def test_gates_are_registered_routers():
    assert GATES == {"avg": "", "mole": "MoLEGate", "sage": "SAGEGate"}
    for gate, name in GATES.items():
        assert gate_router(gate) == name
        if name:
            assert name in ROUTER_REGISTRY._obj_map
    assert set(TRAINED_GATES) == {g for g, n in GATES.items() if n}
    with pytest.raises(ValueError, match="unknown gate kind"):
        gate_router("dense")


def test_config_default_and_keys():
    from fastreid.config import get_cfg

    cfg = add_sage_config(get_cfg())
    assert tuple(cfg.SAGE.BASELINES) == DEFAULT_BASELINES
    assert "KNOTS_COMBINATION" not in cfg.SAGE.MERGE  # the combination is the row's


def test_layout():
    lay = RunLayout("/run")
    assert lay.source_dir("a") == os.path.join("/run", "stage0", "a")
    assert lay.blend_dir == os.path.join("/run", "stage0", "blend")
    assert lay.mean_source == os.path.join("/run", "stage0", "avg", "model.safetensors")
    assert lay.supervised_dir == os.path.join("/run", "stage0", "target_supervised")
    assert lay.expert_dir("a") == os.path.join("/run", "stage1", "a", "expert")
    assert lay.expert_dir("avg") == os.path.join("/run", "stage1", "avg", "expert")
    assert lay.expert_dir("blend") == os.path.join("/run", "stage1", "blend", "expert")
    assert lay.gate_dir("mole") == os.path.join("/run", "stage2", "mole")
    assert lay.leave_one_out_dir("a") == os.path.join("/run", "stage2", "without_a")
    with pytest.raises(ValueError, match="gate must be one of"):
        lay.gate_dir("avg")
    for tag in RESERVED_TAGS:
        with pytest.raises(ValueError, match="reserved"):
            check_tags(("a", tag))
    check_tags(("a", "b"))


def _demo_cfg(tmp_path, *opts):
    from pathlib import Path

    from plugins.config import setup_cfg

    repo = Path(__file__).resolve().parents[2]
    return setup_cfg(str(repo / "configs" / "sage" / "demo.yml"), ["OUTPUT_DIR", str(tmp_path), *opts])


def test_pipeline_refuses_rows_it_cannot_make(tmp_path, monkeypatch):
    from plugins.sage import pipeline

    with pytest.raises(ValueError, match="unknown entries \\['knots'\\]"):
        pipeline.SAGEPipeline(_demo_cfg(tmp_path, "SAGE.BASELINES", '("knots",)'))
    with pytest.raises(ValueError, match="set SAGE.BLEND True"):
        pipeline.SAGEPipeline(_demo_cfg(tmp_path, "SAGE.BASELINES", '("blend_vit_lora",)', "SAGE.BLEND", "False"))
    with pytest.raises(ValueError, match="reserved"):
        pipeline.SAGEPipeline(_demo_cfg(tmp_path, "SAGE.SOURCE_TAGS", '("a", "avg", "d")'))
    # the upper bound needs a labelled target: checked before anything trains
    p = pipeline.SAGEPipeline(_demo_cfg(tmp_path, "SAGE.BASELINES", '("supervised",)'))
    monkeypatch.setattr(pipeline, "dataset_items", lambda names, split: [("x.jpg", -1, 0)] * 5)
    with pytest.raises(ValueError, match="1 identity label"):
        p.check_target_labels()
    monkeypatch.setattr(pipeline, "dataset_items", lambda names, split: [("x.jpg", i % 3, 0) for i in range(6)])
    p.check_target_labels()
