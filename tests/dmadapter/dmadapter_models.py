"""Small DM-Adapter models and batches shared by the DM-Adapter tests (random init, CPU)."""
from __future__ import annotations

import copy

import pytest
import torch
from fastreid.config import get_cfg
from fastreid.modeling import build_model

import plugins.dmadapter  # noqa: F401  (registers DMAdapter, DomainAwareRouter)
from plugins.config import add_plugins_config
from plugins.dmadapter.config import add_dmadapter_config
from plugins.modeling.backbones.clip.tiny import TINY_CLIP_CONFIG

# The tiny CLIP's shapes with 12 blocks per tower (24 SMA blocks, as ViT-B/16) at width 64: the golden aux value
# of the paper's depth at the cost of a toy.
DEEP_TOY = copy.deepcopy(TINY_CLIP_CONFIG)
DEEP_TOY["embed_dim"] = 32
DEEP_TOY["vision_cfg"].update(layers=12, width=64, head_width=32)
DEEP_TOY["text_cfg"].update(layers=12, width=64, heads=2)

TINY_OPTS = ["MODEL.DEVICE", "cpu", "MODEL.META_ARCHITECTURE", "DMAdapter", "MODEL.BACKBONE.CLIP.NAME", "tiny",
             "MODEL.BACKBONE.CLIP.WEIGHTS", "", "MODEL.BACKBONE.PRETRAIN", "False",
             "MODEL.PIXEL_MEAN", "[127.5, 127.5, 127.5]", "MODEL.PIXEL_STD", "[127.5, 127.5, 127.5]",
             "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]"]


def dm_cfg(*opts):
    """fast-reid defaults + plugin keys + DMADAPTER keys + the tiny options + ``opts``."""
    cfg = add_dmadapter_config(add_plugins_config(get_cfg()))
    cfg.merge_from_list(TINY_OPTS + [str(o) for o in opts])
    return cfg


def tiny_model(*opts, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(dm_cfg(*opts))


def captions_batch(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 77) token ids of random captions: SOT, 5-20 ordinary ids, EOT, padding."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(n, 77, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(5, 21, (1,), generator=g))
        tokens[i, 0] = 49406
        tokens[i, 1:1 + length] = torch.randint(1, 49405, (length,), generator=g)
        tokens[i, 1 + length] = 49407
    return tokens
