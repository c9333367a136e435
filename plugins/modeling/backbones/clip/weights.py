"""CLIP weights from local files: an OpenAI TorchScript archive (``ViT-B-16.pt``), an open_clip checkpoint, a
plain state dict or safetensors. Nothing unpickles arbitrary objects: torch files are read with
``weights_only=True``; a TorchScript archive is opened by ``torch.jit.load``, which restores tensors and
TorchScript code without running Python pickles, and only its ``state_dict()`` is kept.

OpenAI's and open_clip's key names are the same (``visual.conv1.weight``, ``transformer.resblocks.N...``,
``token_embedding.weight``, ...): converting one to the other is dropping a wrapper and the three metadata
entries of OpenAI's archives; nothing is transposed or split.
"""
from __future__ import annotations

import logging
import math
import os
import zipfile
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ....compat.checkpoint import load_checkpoint_file, read_safetensors

__all__ = ["read_state_dict", "strip_prefix", "resize_positional_embedding", "fit_visual_positional_embedding",
           "load_state_strict", "load_clip_weights"]

logger = logging.getLogger("fastreid." + __name__)

# Entries of OpenAI's TorchScript state dicts that are model metadata, not parameters.
_OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> Dict[str, torch.Tensor]:
    """Drop ``prefix`` (DataParallel's ``module.``) from every key that has it."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The tensors of a weights file as a flat ``name -> tensor`` dict (float dtypes kept as stored).

    Accepts ``.safetensors``, a TorchScript archive (OpenAI's release), or a torch file holding a state dict,
    possibly nested under ``"state_dict"`` / ``"model"`` and prefixed with ``module.``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP weights file '{path}' does not exist")
    if path.endswith(".safetensors"):

        state = read_safetensors(path)
    elif _is_torchscript(path):
        state = torch.jit.load(path, map_location="cpu").state_dict()
    else:
        state = load_checkpoint_file(path)["model"]  # weights_only=True; a bare dict comes back as {"model": it}
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    bad = [k for k, v in state.items() if not torch.is_tensor(v)]
    if bad:
        raise ValueError(f"'{path}' is not a flat state dict of tensors: entries {bad[:5]} are not tensors")
    state = strip_prefix(dict(state))
    for key in _OPENAI_METADATA:
        state.pop(key, None)
    return state


def _grid_of(num_patches: int, grid: Optional[Sequence[int]]) -> Tuple[int, int]:
    if grid is not None:
        h, w = (int(v) for v in grid)
        if h * w != num_patches:
            raise ValueError(f"positional embedding has {num_patches} patch rows, not {h}x{w}")
        return h, w
    side = int(math.isqrt(num_patches))
    if side * side != num_patches:
        raise ValueError(f"positional embedding with {num_patches} patch rows is not a square grid; give its grid")
    return side, side


def resize_positional_embedding(pos: torch.Tensor, new_grid: Sequence[int],
                                old_grid: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Resample a ViT positional embedding (1 + gh*gw, D) to ``new_grid`` (H', W'): the CLS row is kept, the grid
    is resized with ``F.interpolate(mode="bilinear", align_corners=False)`` and no antialiasing, the convention
    of CLIP-ReID and DM-Adapter (open_clip's own bicubic + antialias resize differs by up to 0.059).

    ``old_grid`` defaults to a square grid. Returns (1 + H'*W', D) in ``pos``'s dtype."""
    gh, gw = _grid_of(pos.shape[0] - 1, old_grid)
    nh, nw = (int(v) for v in new_grid)
    if (gh, gw) == (nh, nw):
        return pos.clone()
    cls, grid = pos[:1], pos[1:]
    grid = grid.reshape(1, gh, gw, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(nh, nw), mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(nh * nw, -1).to(pos.dtype)
    return torch.cat([cls, grid], dim=0)


def fit_visual_positional_embedding(state: Dict[str, torch.Tensor], visual: nn.Module,
                                    key: str = "visual.positional_embedding") -> Dict[str, torch.Tensor]:
    """Resize ``state[key]`` to the grid of ``visual`` (an open_clip VisionTransformer) when they differ."""
    if key in state and state[key].shape != visual.positional_embedding.shape:
        before = tuple(state[key].shape)
        state = dict(state)
        state[key] = resize_positional_embedding(state[key], visual.grid_size)
        logger.info(f"resized {key} {before} -> {tuple(state[key].shape)} (grid {tuple(visual.grid_size)})")
    return state


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, *,
                      allow_missing: Iterable[str] = (), allow_unexpected: Iterable[str] = ()) -> None:
    """``module.load_state_dict(state)`` that fails naming ``source`` and the first keys that do not fit.

    ``allow_missing`` / ``allow_unexpected``: key prefixes tolerated (and logged) on either side."""
    own = module.state_dict()
    allow_missing, allow_unexpected = tuple(allow_missing), tuple(allow_unexpected)
    shape = [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state and not k.startswith(allow_missing)]
    unexpected = [k for k in state if k not in own and not k.startswith(allow_unexpected)]
    problems = []
    if shape:
        problems.append(f"{len(shape)} tensors of another shape, e.g. {shape[:3]}")
    if missing:
        problems.append(f"{len(missing)} model keys missing from the file, e.g. {missing[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} keys the model does not have, e.g. {unexpected[:5]}")
    if problems:
        raise KeyError(f"'{source}' does not fit {type(module).__name__}: " + "; ".join(problems))
    tolerated = [k for k in own if k not in state] + [k for k in state if k not in own]
    if tolerated:
        logger.info(f"{source}: keys left as they are / ignored: {tolerated[:5]} ({len(tolerated)} keys)")
    with torch.no_grad():
        module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def load_clip_weights(model: nn.Module, path: str) -> None:
    """Load OpenAI / open_clip CLIP weights from ``path`` into an ``open_clip.model.CLIP``, resizing the image
    tower's positional embedding to the model's grid; fails naming the file and the first keys that do not fit.
    ``logit_scale`` (and ``logit_bias``) may be absent: they do not enter any feature."""
    state = fit_visual_positional_embedding(read_state_dict(path), model.visual)
    dtype = {k: v.dtype for k, v in model.state_dict().items()}
    state = {k: v.to(dtype[k]) if k in dtype and v.is_floating_point() else v for k, v in state.items()}
    load_state_strict(model, state, path, allow_missing=("logit_scale", "logit_bias"))
