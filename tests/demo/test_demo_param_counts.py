"""Golden trainable-parameter counts of the spec's table (measured from the official code; paper Table 5), built
from the shipped configs with random init on the meta device (no memory, no weights, no download)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastreid.modeling import build_model

from plugins.config import import_methods, setup_cfg

import_methods()
REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "demo"


def trainable(config: str, num_classes: int, *opts) -> int:
    cfg = setup_cfg(str(CONFIGS / config), ["MODEL.DEVICE", "meta", "MODEL.BACKBONE.PRETRAIN", "False",
                                            "MODEL.HEADS.NUM_CLASSES", str(num_classes), *opts])
    with torch.device("meta"):
        model = build_model(cfg)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("config,expected", [
    ("rgbnt201_ladder_A.yml", 86_407_680), ("rgbnt201_ladder_B.yml", 87_988_224),
    ("rgbnt201_ladder_C.yml", 95_962_624), ("rgbnt201_ladder_D.yml", 98_792_960),
    ("rgbnt201_ladder_E.yml", 98_792_960), ("rgbnt201.yml", 98_792_960),
    ("rgbnt201_attention_h8.yml", 98_563_584)])
def test_rgbnt201_rows(config, expected):
    assert trainable(config, 171) == expected


LADDER = [("A", False, False, False), ("B", True, False, False), ("C", True, True, False), ("E", True, True, True)]


@pytest.mark.parametrize("config,ids,expected", [
    ("rgbnt100.yml", 50, (86_224_896, 87_805_440, 95_346_176, 97_947_136)),
    ("msvr310.yml", 155, (86_386_176, 87_966_720, 95_883_776, 98_484_736))])
def test_vehicle_rows(config, ids, expected):
    got = tuple(trainable(config, ids, "DEMO.PIFE", str(p), "DEMO.HDM", str(h), "DEMO.ATMOE", str(a))
                for _, p, h, a in LADDER)
    assert got == expected


def test_parts_of_the_rgbnt201_model():
    """The spec's breakdown: CLIP visual 86,140,416, camera embedding 3,072, experts 469,504, gate 2,360,832."""
    cfg = setup_cfg(str(CONFIGS / "rgbnt201.yml"), ["MODEL.DEVICE", "meta", "MODEL.BACKBONE.PRETRAIN", "False",
                                                    "MODEL.HEADS.NUM_CLASSES", "171"])
    with torch.device("meta"):
        model = build_model(cfg)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert count(model.encoder.tower.visual) == 86_140_416
    assert model.encoder.tower.camera_embed.numel() == 3_072
    assert count(model.atmoe.experts) == 469_504 and count(model.atmoe.gate) == 2_360_832
    assert count(model.hdm) == 3_584 + 7_354_368
    assert not model.bottleneck.bias.requires_grad and not model.bottleneck_moe.bias.requires_grad


def test_flops_of_model_e_within_one_percent_of_table_5():
    """tools/benchmark_demo.py's count (FlopCounterMode / 2 = multiply-adds, fvcore's "FLOPs"), one triplet."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("demo_benchmark_tool", REPO / "tools" / "benchmark_demo.py")
    tool = importlib.util.module_from_spec(spec)
    sys.modules["demo_benchmark_tool"] = tool
    spec.loader.exec_module(tool)
    gmacs = tool.macs_per_sample("rgbnt201.yml")
    assert abs(gmacs / 35.10 - 1) < 0.01, gmacs
