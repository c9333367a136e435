"""Every configs/dmadapter/*.yml loads and builds its model; ViT-B/16 configs are built on the meta device (shapes
only) and their trainable parameters match the closed-form count of their SMA, the paper's ablations included."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plugins.config import import_methods, setup_cfg
from plugins.dmadapter.meta_arch import DMAdapter

import_methods()
CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "dmadapter").glob("*.yml"))


def expected_trainable(d_img: int, d_txt: int, layers: int, n: int, router: str, ratio: int = 8) -> int:
    def block(d):
        r = d // ratio
        experts = n * (d * r + r + r * d + d)
        gates = 0 if n == 1 else (2 * n * d + d + 1 if router == "DomainAwareRouter" else n * d)
        return 2 * d + experts + gates  # + ln_3
    return layers * (block(d_img) + block(d_txt))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_builds_its_model(path):
    cfg = setup_cfg(str(path), ["MODEL.BACKBONE.PRETRAIN", "False"])
    assert cfg.MODEL.META_ARCHITECTURE == "DMAdapter" and cfg.PLUGINS.TRAINER == "DMAdapterTrainer"
    assert cfg.PLUGINS.DATA.TEXT and cfg.PLUGINS.SEED >= 0
    assert cfg.DMADAPTER.VAL_SPLIT != "test"  # never select on the test split
    d = cfg.DMADAPTER
    if cfg.MODEL.BACKBONE.CLIP.NAME == "ViT-B-16":
        with torch.device("meta"):
            model = DMAdapter(cfg)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert trainable == expected_trainable(768, 512, 12, int(d.NUM_EXPERTS), d.ROUTER)
        if path.name in ("cuhk_pedes.yml", "icfg_pedes.yml", "rstpreid.yml"):
            assert trainable == 15_669_528
    else:
        assert cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.BACKBONE.CLIP.NAME == "tiny"
        model = DMAdapter(setup_cfg(str(path), ["MODEL.BACKBONE.CLIP.WEIGHTS", "", "MODEL.BACKBONE.PRETRAIN",
                                                "False"]))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert trainable == expected_trainable(128, 128, 4, int(d.NUM_EXPERTS), d.ROUTER)


def test_icfg_has_no_validation_split():
    cfg = setup_cfg(str(CONFIGS[0].parent / "icfg_pedes.yml"))
    assert cfg.DMADAPTER.VAL_SPLIT == ""
