"""Tiny CLIP-ReID configs shared by the CLIP-ReID tests."""
from __future__ import annotations

import pytest

from plugins.config import import_methods, setup_cfg

import_methods()

# The tiny CLIP model (MODEL.BACKBONE.CLIP.NAME "tiny") at 64x32, random weights, 3 cameras.
TINY_OPTS = ["MODEL.DEVICE", "cpu", "MODEL.META_ARCHITECTURE", "CLIPReID", "MODEL.BACKBONE.CLIP.NAME", "tiny",
             "MODEL.BACKBONE.CLIP.WEIGHTS", "", "MODEL.BACKBONE.PRETRAIN", "False",
             "MODEL.BACKBONE.CLIP.NUM_CAMERAS", "3", "MODEL.BACKBONE.SIE_COE", "3.0",
             "MODEL.PIXEL_MEAN", "[127.5, 127.5, 127.5]", "MODEL.PIXEL_STD", "[127.5, 127.5, 127.5]",
             "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]", "MODEL.HEADS.NUM_CLASSES", "4"]


@pytest.fixture
def tiny_cfg():
    def make(*opts):
        return setup_cfg("", TINY_OPTS + list(opts))
    return make
