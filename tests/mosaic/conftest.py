"""Tiny MoSAIC configs shared by the MoSAIC tests."""
from __future__ import annotations

import pytest
import torch

from plugins.config import import_methods, setup_cfg
from plugins.data.datasets.market_attribute import MARKET_ATTRIBUTES

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


def market_attributes(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 27) valid Market attribute vectors: binary fields 0/1, age 0-3, exactly one colour per group."""
    g = torch.Generator().manual_seed(seed)
    v = torch.zeros(n, len(MARKET_ATTRIBUTES), dtype=torch.long)
    names = [s.name for s in MARKET_ATTRIBUTES]
    for i, s in enumerate(MARKET_ATTRIBUTES):
        if s.group not in ("upper_colour", "lower_colour"):
            v[:, i] = torch.randint(len(s.values), (n,), generator=g)
    for group in ("upper_colour", "lower_colour"):
        cols = [i for i, s in enumerate(MARKET_ATTRIBUTES) if s.group == group]
        pick = torch.randint(len(cols), (n,), generator=g)
        v[torch.arange(n), torch.tensor(cols)[pick]] = 1
    assert names[9] == "age"
    return v


def tiny_batch(n: int = 8, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return {"images": torch.rand(n, 3, 64, 32) * 255, "targets": torch.arange(n) % 4, "camids": torch.arange(n) % 3,
            "attributes": market_attributes(n, seed)}
