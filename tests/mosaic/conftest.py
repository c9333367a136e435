"""Tiny MoSAIC configs shared by the MoSAIC tests."""
from __future__ import annotations

import pytest

from plugins.config import import_methods, setup_cfg

import_methods()

# The tiny CLIP (4 blocks, width 128) at 64x32, random weights, 3 cameras, Market attribute schema, i2t off (no
# stage-1 prompts needed).
TINY_OPTS = ["MODEL.DEVICE", "cpu", "MODEL.META_ARCHITECTURE", "MoSAIC", "MODEL.BACKBONE.CLIP.NAME", "tiny",
             "MODEL.BACKBONE.CLIP.WEIGHTS", "", "MODEL.BACKBONE.PRETRAIN", "False",
             "MODEL.BACKBONE.CLIP.NUM_CAMERAS", "3", "MODEL.PIXEL_MEAN", "[127.5, 127.5, 127.5]",
             "MODEL.PIXEL_STD", "[127.5, 127.5, 127.5]", "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]",
             "MODEL.HEADS.NUM_CLASSES", "4", "DATASETS.NAMES", "('Market1501Attribute',)",
             "DATASETS.TESTS", "('Market1501Attribute',)", "CLIPREID.I2T_WEIGHT", "0.0",
             "PLUGINS.DATA.ATTRIBUTES", "True", "MOSAIC.LAST_K", "2"]


@pytest.fixture
def tiny_cfg():
    def make(*opts):
        return setup_cfg("", TINY_OPTS + list(opts))
    return make
