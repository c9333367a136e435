"""Tiny MoE-KD configs: the tiny CLIP (random init) and a tiny random ALIGN at 64x32."""
from __future__ import annotations

import pytest

from plugins.config import import_methods, setup_cfg

import_methods()

TINY = {"MODEL.DEVICE": "cpu", "MODEL.BACKBONE.PRETRAIN": False, "MODEL.HEADS.NUM_CLASSES": 3,
        "INPUT.SIZE_TRAIN": [64, 32], "INPUT.SIZE_TEST": [64, 32], "MODEL.BACKBONE.CLIP.NAME": "tiny",
        "MODEL.BACKBONE.CLIP.WEIGHTS": "", "MODEL.BACKBONE.CLIP.QUICK_GELU": True,
        "MOEKD.ALIGN.WIDTH_COEFFICIENT": 0.25, "MOEKD.ALIGN.DEPTH_COEFFICIENT": 0.25, "MOEKD.FEAT_DIM": 64,
        "MOEKD.CLIP.ADAPTER_HIDDEN": 32, "MOEKD.GATE.HIDDEN": [16, 8], "MOEKD.STUDENT.PROJ_DIM": 64}


def tiny_cfg(**overrides):
    merged = {**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}}
    return setup_cfg("", [x for kv in merged.items() for x in kv])


@pytest.fixture
def make_cfg():
    return tiny_cfg
