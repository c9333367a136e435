"""The official DM-Adapter checkpoint -> the state dict of :class:`plugins.dmadapter.meta_arch.DMAdapter`.

Pure functions on ``name -> tensor`` dicts (``tools/convert_weights.py --from dmadapter`` reads and writes the
files). The official checkpoint (an IRRA fork) is ``{"model": state_dict, ...}`` (1,026 keys for ViT-B/16; a
``module.`` prefix is possible), mixed precision (Linear / Conv weights and projections in float16, LayerNorms,
embeddings and prompts in float32):

| official key                                                   | ``DMAdapter`` key                              |
|----------------------------------------------------------------|------------------------------------------------|
| ``base_model.visual.<k>``                                      | ``image_encoder.visual.<k>``                   |
| ``base_model.{token_embedding, positional_embedding, transformer, ln_final, text_projection}.*`` | ``text_encoder.<same>`` |
| ``...resblocks.N.ln_3.*``                                      | ``...resblocks.N.ln_3.*``                      |
| ``...resblocks.N.task_param``                                  | ``...resblocks.N.sma.router.prompt`` (p)       |
| ``...resblocks.N.feed_forward.alpha``                          | ``...resblocks.N.sma.router.alpha`` (a)        |
| ``...resblocks.N.feed_forward.input_gate.weight``              | ``...resblocks.N.sma.router.gate.weight`` (W_g) |
| ``...resblocks.N.feed_forward.task_gate.weight``               | ``...resblocks.N.sma.router.domain_gate.weight`` (W_d) |
| ``...resblocks.N.feed_forward.experts.J.{down,up}.*``          | ``...resblocks.N.sma.experts.J.{down,up}.*``   |
| ``base_model.{vision_param, text_param, co_vision_param, v2i_proj.*}``, ``base_model.logit_scale`` | dropped (never used in the forward) |

Nothing is transposed or resized (the official image tower holds its 24x8 + 1 positional embedding); floating
tensors are cast to float32.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Mapping, NamedTuple

import torch

__all__ = ["UNUSED_OFFICIAL", "ConvertedDMAdapter", "map_official_key", "convert_official_state"]

logger = logging.getLogger("fastreid." + __name__)

_PREFIX = "base_model."
_TEXT_PARTS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
# Official parameters that are trainable but never enter the forward (and CLIP's logit scale).
UNUSED_OFFICIAL = ("vision_param", "text_param", "co_vision_param", "v2i_proj.", "logit_scale")
_BLOCK_RENAMES = (("task_param", "sma.router.prompt"), ("feed_forward.alpha", "sma.router.alpha"),
                  ("feed_forward.input_gate.", "sma.router.gate."),
                  ("feed_forward.task_gate.", "sma.router.domain_gate."),
                  ("feed_forward.experts.", "sma.experts."))


class ConvertedDMAdapter(NamedTuple):
    state: Dict[str, torch.Tensor]   # DMAdapter keys, float32
    dropped: List[str]               # official keys not carried (unused in the official forward)


def map_official_key(key: str):
    """Official key (no ``module.``) -> DMAdapter key, or None for a parameter that is dropped; KeyError when the
    key is not part of the official layout."""
    if not key.startswith(_PREFIX):
        raise KeyError(f"{key!r} is not a DM-Adapter key (every official key starts with {_PREFIX!r})")
    rest = key[len(_PREFIX):]
    if rest.startswith(UNUSED_OFFICIAL):
        return None
    if rest.startswith("visual."):
        out = "image_encoder." + rest
    elif rest.startswith(_TEXT_PARTS):
        out = "text_encoder." + rest
    else:
        raise KeyError(f"{key!r} is not in the official DM-Adapter layout")
    if ".resblocks." in out:
        head, tail = out.split(".resblocks.", 1)
        block, name = tail.split(".", 1)
        for old, new in _BLOCK_RENAMES:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        out = f"{head}.resblocks.{block}.{name}"
    return out


def convert_official_state(state: Mapping[str, torch.Tensor], *, source: str = "checkpoint") -> ConvertedDMAdapter:
    """Official state dict (``module.`` stripped or not) -> :class:`ConvertedDMAdapter`; fails naming ``source``."""
    ours, dropped = {}, []
    for key, value in state.items():
        plain = key[len("module."):] if key.startswith("module.") else key
        if not torch.is_tensor(value):
            raise ValueError(f"'{source}': entry {key!r} is not a tensor")
        mapped = map_official_key(plain)
        if mapped is None:
            dropped.append(plain)
            continue
        if mapped in ours:
            raise KeyError(f"'{source}': {key!r} maps onto {mapped!r} twice (both with and without 'module.'?)")
        ours[mapped] = value.detach().float() if value.is_floating_point() else value.detach()
    if "image_encoder.visual.conv1.weight" not in ours or "text_encoder.text_projection" not in ours:
        raise KeyError(f"'{source}' lacks the CLIP towers (base_model.visual.conv1.weight / "
                       f"base_model.text_projection): not a DM-Adapter checkpoint")
    if dropped:
        logger.info(f"'{source}': dropped {len(dropped)} official parameters that never enter the forward: "
                    f"{sorted(dropped)}")
    return ConvertedDMAdapter(ours, dropped)
