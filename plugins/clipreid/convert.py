"""CLIP-ReID's official stage-2 checkpoint -> the state dict of :class:`plugins.modeling.meta_arch.clipreid.CLIPReID`.

Pure functions on ``name -> tensor`` dicts (``tools/convert_weights.py --from clipreid`` reads and writes the
files). The official checkpoint is ``torch.save(model.state_dict())`` of the authors' ``build_transformer``
(float32, 316 keys for ViT-B/16 with the SIE camera table; ``module.`` may prefix every key):

| official key                                          | ``CLIPReID`` key                                      |
|-------------------------------------------------------|-------------------------------------------------------|
| ``image_encoder.<k>`` (OpenAI ``visual.<k>``)         | ``image_encoder.visual.<k>``                          |
| ``cv_embed`` (cams x views, D)                        | ``image_encoder.camera_embed``                        |
| ``text_encoder.{transformer.*, positional_embedding, ln_final.*, text_projection}`` | ``text_encoder.<same>`` |
| (absent)                                              | ``text_encoder.token_embedding.weight``: OpenAI's CLIP |
| ``prompt_learner.{token_prefix, token_suffix, cls_ctx}`` | same                                               |
| ``bottleneck.*``, ``bottleneck_proj.*``               | same (BatchNorm1d incl. running statistics)           |
| ``classifier.weight``, ``classifier_proj.weight``     | same                                                  |

Nothing is transposed, split or resized: the official image tower already holds the positional embedding of its
input grid (129 rows at 256x128). Floating tensors are cast to float32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

__all__ = ["TOKEN_EMBEDDING_KEY", "KEY_GROUPS", "CheckpointInfo", "ConvertedCheckpoint", "map_official_key",
           "describe_keys", "inspect_official", "convert_official_state", "group_counts", "prompt_embedding_error"]

TOKEN_EMBEDDING_KEY = "text_encoder.token_embedding.weight"
_TEXT_PARTS = ("transformer.", "positional_embedding", "ln_final.", "text_projection")
_PROMPT_KEYS = ("token_prefix", "token_suffix", "cls_ctx")
_HEAD_MODULES = ("bottleneck", "bottleneck_proj", "classifier", "classifier_proj")
# Keys every stage-2 checkpoint holds (the SIE table and nothing else is optional).
_REQUIRED = ("image_encoder.conv1.weight", "image_encoder.class_embedding", "image_encoder.positional_embedding",
             "image_encoder.proj", "text_encoder.positional_embedding", "text_encoder.text_projection",
             "prompt_learner.token_prefix", "prompt_learner.token_suffix", "prompt_learner.cls_ctx",
             "bottleneck.weight", "bottleneck_proj.weight", "classifier.weight", "classifier_proj.weight")


# Rows of the mapping table, in order: (official keys, CLIPReID keys).
KEY_GROUPS: Tuple[Tuple[str, str], ...] = (
    ("image_encoder.*", "image_encoder.visual.*"),
    ("cv_embed", "image_encoder.camera_embed"),
    ("text_encoder.{transformer.*, positional_embedding, ln_final.*, text_projection}", "same"),
    ("(OpenAI CLIP) token_embedding.weight", TOKEN_EMBEDDING_KEY),
    ("prompt_learner.{token_prefix, token_suffix, cls_ctx}", "same"),
    ("bottleneck.*, bottleneck_proj.*", "same"),
    ("classifier.weight, classifier_proj.weight", "same"),
)


def _group(key: str) -> int:
    """Row of :data:`KEY_GROUPS` of a CLIPReID key."""
    if key.startswith("image_encoder."):
        return 0 if key.startswith("image_encoder.visual.") else 1
    if key.startswith("text_encoder."):
        return 3 if key == TOKEN_EMBEDDING_KEY else 2
    return {"prompt_learner": 4, "bottleneck": 5, "bottleneck_proj": 5}.get(key.split(".")[0], 6)


def map_official_key(key: str) -> Optional[str]:
    """Official key (no ``module.``) -> ``CLIPReID`` key; None when the official model has no such key."""
    head, _, rest = key.partition(".")
    if head == "image_encoder" and rest:
        return "image_encoder.visual." + rest
    if key == "cv_embed":
        return "image_encoder.camera_embed"
    if head == "text_encoder" and rest.startswith(_TEXT_PARTS):
        return key
    if head == "prompt_learner" and rest in _PROMPT_KEYS:
        return key
    if head in _HEAD_MODULES and rest:
        return key
    return None


def describe_keys(keys: Sequence[str]) -> str:
    """A guess at what a state dict that is not an official CLIP-ReID checkpoint is, for error messages."""
    keys = set(keys)
    if "image_encoder.conv1.weight" in keys and "prompt_learner.cls_ctx" in keys:
        return "an official CLIP-ReID stage-2 checkpoint (convert it with --from clipreid)"
    if "image_encoder.visual.conv1.weight" in keys:
        return "an already converted CLIPReID checkpoint (load it directly with MODEL.WEIGHTS)"
    if "visual.conv1.weight" in keys or "token_embedding.weight" in keys:
        return "an OpenAI / open_clip CLIP state dict (convert it with --from openai-clip)"
    if any(k.startswith("base_model.") for k in keys):
        return "a DM-Adapter / IRRA checkpoint"
    if any(k.startswith(("backbone.", "heads.")) for k in keys):
        return "a fast-reid checkpoint"
    return "an unknown layout"


@dataclass(frozen=True)
class CheckpointInfo:
    """Shapes read off an official checkpoint."""
    num_classes: int  # classifier rows (training identities)
    sie_rows: int  # cv_embed rows (cameras x views; 0: trained without SIE)
    width: int  # image tower width D
    embed_dim: int  # projection width E
    layers: int  # image tower blocks
    patch_size: int
    num_patches: int  # positional-embedding rows - 1 (gh * gw)
    text_width: int
    text_layers: int
    context_length: int
    prompt_lengths: Tuple[int, int, int]  # (prefix, learned, suffix) tokens of the prompt

    def grid_for(self, image_size: Sequence[int]) -> Tuple[int, int]:
        """Patch grid (gh, gw) of an (H, W) input."""
        h, w = (int(v) for v in image_size)
        return h // self.patch_size, w // self.patch_size

    def guess_grid(self) -> Optional[Tuple[int, int]]:
        """The portrait grid with gh = 2 gw or 3 gw (ReID's 256x128 / 384x128) that has ``num_patches`` cells; None
        when neither fits (the checkpoint does not record its input size)."""
        for ratio in (2, 3):
            gw = math.isqrt(self.num_patches // ratio)
            if ratio * gw * gw == self.num_patches:
                return ratio * gw, gw
        return None


def _blocks(keys, prefix: str) -> int:
    idx = {int(k[len(prefix):].split(".")[0]) for k in keys if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def _strip_module(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def inspect_official(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> CheckpointInfo:
    """Shapes of an official checkpoint (``module.`` allowed); fails naming ``source`` when keys are missing."""
    state = _strip_module(state)
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise ValueError(f"'{source}' is {describe_keys(list(state))}: it lacks the official CLIP-ReID stage-2 keys "
                         f"{missing[:5]} ({len(missing)} of {len(_REQUIRED)} required keys missing)")
    conv = state["image_encoder.conv1.weight"]
    cv = state.get("cv_embed")
    return CheckpointInfo(
        num_classes=int(state["classifier.weight"].shape[0]), sie_rows=int(cv.shape[0]) if cv is not None else 0,
        width=int(conv.shape[0]), embed_dim=int(state["image_encoder.proj"].shape[1]),
        layers=_blocks(state, "image_encoder.transformer.resblocks."), patch_size=int(conv.shape[-1]),
        num_patches=int(state["image_encoder.positional_embedding"].shape[0]) - 1,
        text_width=int(state["text_encoder.positional_embedding"].shape[1]),
        text_layers=_blocks(state, "text_encoder.transformer.resblocks."),
        context_length=int(state["text_encoder.positional_embedding"].shape[0]),
        prompt_lengths=(int(state["prompt_learner.token_prefix"].shape[1]),
                        int(state["prompt_learner.cls_ctx"].shape[1]),
                        int(state["prompt_learner.token_suffix"].shape[1])))


@dataclass
class ConvertedCheckpoint:
    """The ``CLIPReID`` state dict, its (official key, our key) rows and the checkpoint's shapes."""
    state: Dict[str, torch.Tensor]
    info: CheckpointInfo
    rows: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def has_token_embedding(self) -> bool:
        return TOKEN_EMBEDDING_KEY in self.state


def convert_official_state(state: Mapping[str, torch.Tensor], *, token_embedding: Optional[torch.Tensor] = None,
                           source: str = "checkpoint") -> ConvertedCheckpoint:
    """Official stage-2 state dict -> ``CLIPReID`` state dict (float tensors as float32, contiguous).

    Args:
        state: the official checkpoint's tensors (``module.`` prefix allowed).
        token_embedding: OpenAI CLIP's ``token_embedding.weight`` (V, d) to complete the text tower (official
            checkpoints do not store it; only tokens -> text features need it). None: left out.
        source: the file name, for error messages.
    Raises:
        ValueError: naming ``source``, when keys are missing, unknown, or the token embedding does not fit.
    """
    state = _strip_module(state)
    info = inspect_official(state, source)
    unknown = [k for k in state if map_official_key(k) is None]
    if unknown:
        raise ValueError(f"'{source}' has {len(unknown)} keys that are not in the official CLIP-ReID stage-2 model, "
                         f"e.g. {unknown[:5]}; it looks like {describe_keys(list(state))}")
    out, rows = {}, []
    for key, value in state.items():
        new = map_official_key(key)
        out[new] = (value.float() if value.is_floating_point() else value).contiguous()
        rows.append((key, new))
    if token_embedding is not None:
        if token_embedding.dim() != 2 or token_embedding.shape[1] != info.text_width:
            raise ValueError(f"the CLIP token embedding {tuple(token_embedding.shape)} does not fit the checkpoint's "
                             f"text tower of width {info.text_width} ('{source}')")
        out[TOKEN_EMBEDDING_KEY] = token_embedding.float().contiguous()
        rows.append(("(CLIP) token_embedding.weight", TOKEN_EMBEDDING_KEY))
    return ConvertedCheckpoint(state=out, info=info, rows=rows)


def group_counts(state: Mapping[str, torch.Tensor]) -> List[Tuple[str, str, int]]:
    """(official keys, CLIPReID keys, number of keys) per row of :data:`KEY_GROUPS` for a converted state dict."""
    counts = [0] * len(KEY_GROUPS)
    for key in state:
        counts[_group(key)] += 1
    return [(official, ours, n) for (official, ours), n in zip(KEY_GROUPS, counts)]


def prompt_embedding_error(state: Mapping[str, torch.Tensor], token_embedding: torch.Tensor,
                           template_ids: torch.Tensor) -> float:
    """Max abs difference between the checkpoint's stored prompt prefix / suffix embeddings and the rows of
    ``token_embedding`` at the template's ids (1, L): ~0 when the token embedding is the CLIP the official run
    used (the official code stores the float32 cast of OpenAI's fp16 rows)."""
    state = _strip_module(state)
    prefix, suffix = state["prompt_learner.token_prefix"], state["prompt_learner.token_suffix"]
    ids = template_ids.reshape(-1).long()
    p, s = prefix.shape[1], suffix.shape[1]
    rows = token_embedding.float()
    return max(float((rows[ids[:p]] - prefix[0].float()).abs().max()),
               float((rows[ids[ids.numel() - s:]] - suffix[0].float()).abs().max()))
