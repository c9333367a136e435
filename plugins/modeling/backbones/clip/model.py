"""Build an open_clip ``CLIP`` (both towers) from a model name or an open_clip model-config dict, offline.

open_clip is the project's one CLIP source: the real ViT-B/16 and the tiny procedural-data CLIP differ only in the
model config handed to ``open_clip.model.CLIP``. Nothing is downloaded here: weights come from
:mod:`.weights` (local files) or, online and only when asked, from open_clip's own ``create_model``.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import open_clip
from open_clip.model import CLIP

__all__ = ["ModelSpec", "clip_model_config", "build_clip_model"]

# An open_clip model name ("ViT-B-16") or its config dict ({"embed_dim", "vision_cfg", "text_cfg"}).
ModelSpec = Union[str, Mapping[str, Any]]


def clip_model_config(model: ModelSpec, *, image_size: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """open_clip's model config of ``model`` (a copy), with ``vision_cfg.image_size`` set to ``(H, W)`` if given.

    A ``-quickgelu`` name suffix is accepted and dropped (the activation is chosen by ``build_clip_model``)."""
    if isinstance(model, str):
        name = model[: -len("-quickgelu")] if model.endswith("-quickgelu") else model
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            known = [m for m in open_clip.list_models() if m.startswith("ViT")][:12]
            raise KeyError(f"open_clip has no model config named {model!r} (e.g. {known}); or pass a config dict")
    elif isinstance(model, Mapping):
        cfg = model
    else:
        raise TypeError(f"model must be an open_clip model name or a config dict, got {type(model).__name__}")
    cfg = copy.deepcopy(dict(cfg))
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise KeyError(f"CLIP model config lacks {missing} (open_clip's model-config layout)")
    cfg.pop("quick_gelu", None)
    if image_size is not None:
        h, w = (int(v) for v in image_size)
        cfg["vision_cfg"] = dict(cfg["vision_cfg"], image_size=[h, w])
    return cfg


def build_clip_model(model: ModelSpec, *, image_size: Optional[Sequence[int]] = None,
                     quick_gelu: bool = True) -> CLIP:
    """A randomly initialised ``open_clip.model.CLIP`` (both towers), float32.

    Args:
        model: open_clip model name (e.g. ``"ViT-B-16"``) or config dict (open_clip's JSON layout).
        image_size: (H, W) input of the image tower, e.g. (256, 128) -> a 16x8 patch grid + CLS = 129 tokens.
        quick_gelu: x * sigmoid(1.702 x), as OpenAI's released CLIP (and CLIP-ReID / DM-Adapter) use; plain
            GELU with OpenAI's weights moves features by up to 0.035.
    """
    cfg = clip_model_config(model, image_size=image_size)
    grid = cfg["vision_cfg"].get("image_size", 224)
    patch = cfg["vision_cfg"].get("patch_size", 16)
    for side in ([grid, grid] if isinstance(grid, int) else grid):
        if int(side) % int(patch):
            raise ValueError(f"image size {grid} is not a multiple of the patch size {patch}")
    return CLIP(**cfg, quick_gelu=quick_gelu)
