"""Official DeMo checkpoint (924973292/DeMo: ``torch.save(model.state_dict())``, ``module.`` under DDP) -> the
state dict of our ``DeMo`` (a pure mapping; ``tools/convert_weights.py --from demo`` writes and checks it).

| official key                                                        | ``DeMo`` key                              |
|---------------------------------------------------------------------|-------------------------------------------|
| ``BACKBONE.cv_embed`` [cams, 1, 768]                                | ``encoder.tower.camera_embed`` [cams, 768] |
| ``BACKBONE.base.<open_clip visual key>``                            | ``encoder.tower.visual.<key>``            |
| ``{rgb,nir,tir}_reduce.0.*`` (LayerNorm 2C) / ``.1.*`` (Linear)     | ``pife.{RGB,NI,TI}.norm.*`` / ``.fc.*``    |
| ``generalFusion.{r,n,t,rn,rt,nt,rnt}_token`` [1, 1, C]              | ``hdm.queries.{r,...}``                   |
| ``generalFusion.{r,...}.{in_proj_*, out_proj.*}``                   | ``hdm.attn.{r,...}.*``                    |
| ``generalFusion.moe.experts.{h}.expertHead.{j}.mlp.{0,2}.*``        | ``atmoe.experts.{h}.{j}.mlp.{0,2}.*``     |
| ``generalFusion.moe.gating_network.gate.linear_re.{0,2}.*``         | ``atmoe.gate.reduce.{0,2}.*``             |
| ``generalFusion.moe.gating_network.gate.{q_,k_}.weight``            | ``atmoe.gate.{q,k}.weight``               |
| ``bottleneck*``, ``classifier*`` (joint, ``_moe``, ``_{r,n,t}``)    | same                                      |

Nothing else moves a feature: the official positional embedding is already the 16x8 + 1 grid, projections are
``x @ W`` in both, and the HDM feature order [r, n, t, rn, rt, nt, rnt] is ours. Floating tensors become float32.
"""
from __future__ import annotations

import re
from typing import Dict, Mapping, NamedTuple, Optional

import torch

__all__ = ["map_official_key", "convert_official_state", "ConvertedDeMo", "CheckpointShape"]

_MODALITY = {"rgb": "RGB", "nir": "NI", "tir": "TI"}
_QUERIES = ("r", "n", "t", "rn", "rt", "nt", "rnt")
_HEADS = re.compile(r"^(bottleneck|classifier)(_moe|_r|_n|_t)?\.")
_EXPERT = re.compile(r"^generalFusion\.moe\.experts\.(\d+)\.expertHead\.(\d+)\.mlp\.(.+)$")
_GATE = "generalFusion.moe.gating_network.gate."


def map_official_key(key: str) -> str:
    """Official key (no ``module.``) -> ``DeMo`` key; KeyError when the key is not in the official layout."""
    if key == "BACKBONE.cv_embed":
        return "encoder.tower.camera_embed"
    if key.startswith("BACKBONE.base."):
        return "encoder.tower.visual." + key[len("BACKBONE.base."):]
    m = re.match(r"^(rgb|nir|tir)_reduce\.([01])\.(weight|bias)$", key)
    if m:
        return f"pife.{_MODALITY[m.group(1)]}.{'norm' if m.group(2) == '0' else 'fc'}.{m.group(3)}"
    m = re.match(r"^generalFusion\.(r|n|t|rn|rt|nt|rnt)_token$", key)
    if m:
        return f"hdm.queries.{m.group(1)}"
    m = re.match(r"^generalFusion\.(r|n|t|rn|rt|nt|rnt)\.(in_proj_weight|in_proj_bias|out_proj\.weight|"
                 r"out_proj\.bias)$", key)
    if m:
        return f"hdm.attn.{m.group(1)}.{m.group(2)}"
    m = _EXPERT.match(key)
    if m:
        return f"atmoe.experts.{m.group(1)}.{m.group(2)}.mlp.{m.group(3)}"
    if key.startswith(_GATE):
        rest = key[len(_GATE):]
        for old, new in (("linear_re.", "reduce."), ("q_.", "q."), ("k_.", "k.")):
            if rest.startswith(old):
                return "atmoe.gate." + new + rest[len(old):]
    if _HEADS.match(key):
        return key
    raise KeyError(f"{key!r} is not in the official DeMo layout")


class CheckpointShape(NamedTuple):
    """What the checkpoint says about the model it came from (the config keys it needs)."""
    num_classes: int          # MODEL.HEADS.NUM_CLASSES (0: no classifier stored)
    num_cameras: int          # MODEL.BACKBONE.CLIP.NUM_CAMERAS
    pife: bool                # DEMO.PIFE
    hdm: bool                 # DEMO.HDM
    atmoe: bool               # DEMO.ATMOE
    moe_heads: Optional[int]  # DEMO.MOE_HEADS (None without ATMoE)
    heads: str                # DEMO.HEADS: "joint" or "per_modality"
    num_patches: int          # positional-embedding rows - 1


class ConvertedDeMo(NamedTuple):
    state: Dict[str, torch.Tensor]
    shape: CheckpointShape


def _shape(state: Mapping[str, torch.Tensor]) -> CheckpointShape:
    cls = [v for k, v in state.items() if k.startswith("classifier")]
    heads = [int(k.split(".")[2]) for k in state if k.startswith("atmoe.experts.")]
    return CheckpointShape(
        num_classes=int(cls[0].shape[0]) if cls else 0,
        num_cameras=int(state["encoder.tower.camera_embed"].shape[0]) if "encoder.tower.camera_embed" in state else 0,
        pife="pife.RGB.fc.weight" in state, hdm="hdm.queries.r" in state, atmoe="atmoe.gate.q.weight" in state,
        moe_heads=(max(heads) + 1) if heads else None,
        heads="per_modality" if "bottleneck_r.weight" in state else "joint",
        num_patches=int(state["encoder.tower.visual.positional_embedding"].shape[0]) - 1)


def convert_official_state(state: Mapping[str, torch.Tensor], *, source: str = "checkpoint") -> ConvertedDeMo:
    """Official state dict (``module.`` or not) -> :class:`ConvertedDeMo`; fails naming ``source``."""
    ours: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        plain = key[len("module."):] if key.startswith("module.") else key
        if not torch.is_tensor(value):
            raise ValueError(f"'{source}': entry {key!r} is not a tensor")
        try:
            mapped = map_official_key(plain)
        except KeyError as err:
            raise KeyError(f"'{source}': {err.args[0]}") from None
        if mapped in ours:
            raise KeyError(f"'{source}': {key!r} maps onto {mapped!r} twice (both with and without 'module.'?)")
        value = value.detach()
        if mapped == "encoder.tower.camera_embed":
            value = value.reshape(value.shape[0], -1)  # [cams, 1, D] -> [cams, D]
        ours[mapped] = value.float() if value.is_floating_point() else value
    if "encoder.tower.visual.conv1.weight" not in ours:
        raise KeyError(f"'{source}' has no BACKBONE.base.conv1.weight: not a DeMo (CLIP) checkpoint")
    return ConvertedDeMo(ours, _shape(ours))
