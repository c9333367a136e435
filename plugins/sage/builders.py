"""Build the SAGE models from a config and files on disk: stage-1 expert models, the stage-2 merged model, the
static merge baselines. Every file is read without unpickling code (safetensors / ``weights_only=True``).

Layout of a fast-reid SAGE model: ``backbone.vit`` is the timm ViT (``build_timm_vit_backbone``), ``heads`` the
BNNeck head whose ``heads.weight`` is the classifier. An expert folder is peft's adapter layout (LoRA factors
relative to ``backbone.vit``) plus ``neck.safetensors``: the BNNeck that stage 1 trained with the expert, which
peft's format has no place for (peft loaders ignore the extra file).
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Sequence

import torch
from fastreid.modeling import build_model
from safetensors.torch import save_file
from torch import nn

from ..compat.checkpoint import load_checkpoint_file, read_safetensors
from ..layers.gated_lora import GatedLoRALinear
from ..tuners.expert_bank import LoRAExpert, load_expert, load_expert_into, lora_factors, save_expert, trained_biases
from ..tuners.inject import inject_lora
from ..tuners.merge import merge_state_dicts
from ..tuners.merge_backbones import mean_state_dict
from ..tuners.merge_svd import LowRankDelta
from .convert import build_gated_vit, load_mean_biases

__all__ = ["CLASSIFIER_KEY", "NECK_FILE", "vit_of", "num_tokens_of", "load_model_state", "load_source_weights",
           "build_expert_model", "save_expert_with_neck", "load_expert_model", "build_merged_base",
           "build_gated_model", "expert_deltas", "build_static_merge_model", "MERGE_ROWS"]

logger = logging.getLogger("fastreid." + __name__)

CLASSIFIER_KEY = "heads.weight"  # fast-reid EmbeddingHead's classifier: source / pseudo-label classes differ
NECK_FILE = "neck.safetensors"

# results row -> plugins.tuners.merge method
MERGE_ROWS = {"lora_avg": "lora_average", "task_arithmetic": "task_arithmetic", "ties": "ties", "dare": "dare",
              "knots": "knots", "tsv_merge": "tsv_merge"}


def vit_of(model: nn.Module) -> nn.Module:
    """The timm ViT of a fast-reid model built with ``build_timm_vit_backbone``."""
    vit = getattr(getattr(model, "backbone", None), "vit", None)
    if vit is None:
        raise TypeError("SAGE adapts a ViT: set MODEL.BACKBONE.NAME to build_timm_vit_backbone (the model has no "
                        "backbone.vit)")
    return vit


def num_tokens_of(vit: nn.Module) -> int:
    """N = patches + prefix tokens (129 for ViT-B/16 at 256x128)."""
    return int(vit.patch_embed.num_patches + getattr(vit, "num_prefix_tokens", 1))


def load_model_state(path: str) -> Dict[str, torch.Tensor]:
    """A fast-reid model state dict from a ``.safetensors`` file or a fast-reid checkpoint (``{"model": ...}``,
    read with ``weights_only=True``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    return load_checkpoint_file(path)["model"]


def _check_shapes(model: nn.Module, state: Dict[str, torch.Tensor], what: str) -> None:
    """Raise, naming ``what`` (a file), when a tensor of ``state`` has another shape than the model's."""
    own = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
           if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"{what} does not fit the model built from the config (another width/size?): "
                         f"{bad[:3]} ({len(bad)} tensors)")


def _load_without_classifier(model: nn.Module, state: Dict[str, torch.Tensor], what: str) -> None:
    state = {k: v for k, v in state.items() if k != CLASSIFIER_KEY}
    _check_shapes(model, state, what)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != CLASSIFIER_KEY]
    if missing or unexpected:
        raise KeyError(f"{what} does not fit the model built from the config: missing {missing[:5]} "
                       f"({len(missing)} keys), unexpected {list(unexpected)[:5]} ({len(unexpected)} keys)")


def load_source_weights(model: nn.Module, path: str) -> None:
    """Load a source checkpoint into ``model``, all keys but the source classifier (strict otherwise)."""
    _load_without_classifier(model, load_model_state(path), f"source checkpoint {path!r}")


def _lora_kwargs(cfg) -> dict:
    lora = cfg.SAGE.LORA
    return dict(rank=int(lora.RANK), alpha=float(lora.ALPHA), dropout=float(lora.DROPOUT),
                train_bias=bool(lora.TRAIN_BIAS))


def build_expert_model(cfg, source_weights: str) -> nn.Module:
    """Stage 1: source model ``source_weights`` + one fresh peft LoRA adapter on the ViT's block linears.

    Trainable: the LoRA factors (+ ViT biases with ``SAGE.LORA.TRAIN_BIAS``) and the head (BNNeck, classifier);
    the rest of the backbone is frozen.
    """
    model = build_model(cfg)
    load_source_weights(model, source_weights)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    inject_lora(vit_of(model), **_lora_kwargs(cfg))
    return model


def neck_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The head's state without the classifier (BNNeck weight, bias, running statistics), keys relative to heads."""
    return {k[len("heads."):]: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if k.startswith("heads.") and k != CLASSIFIER_KEY}


def save_expert_with_neck(model: nn.Module, directory: str) -> None:
    """Write a stage-1 model's adapter (peft layout) and its BNNeck (``neck.safetensors``) to ``directory``."""
    save_expert(vit_of(model), directory)
    save_file(neck_state(model), os.path.join(directory, NECK_FILE), metadata={"format": "pt"})


def _load_neck(directory: str) -> Dict[str, torch.Tensor] | None:
    path = os.path.join(directory, NECK_FILE)
    return read_safetensors(path) if os.path.isfile(path) else None


def _set_neck(model: nn.Module, neck: Dict[str, torch.Tensor], what: str) -> None:
    """Load a neck (head state without the classifier) strictly; ``what`` names its source in errors."""
    _check_shapes(model.heads, neck, what)
    missing, unexpected = model.heads.load_state_dict(neck, strict=False)
    missing = [k for k in missing if "heads." + k != CLASSIFIER_KEY]
    if missing or unexpected:
        raise KeyError(f"{what} does not fit the model's head: missing {missing[:3]}, unexpected "
                       f"{list(unexpected)[:3]}")


def load_expert_model(cfg, source_weights: str, expert_dir: str) -> nn.Module:
    """A single expert for evaluation / analysis: source model + the saved adapter + its neck; all frozen."""
    model = build_model(cfg)
    load_source_weights(model, source_weights)
    load_expert_into(vit_of(model), expert_dir)
    neck = _load_neck(expert_dir)
    if neck is not None:
        _set_neck(model, neck, os.path.join(expert_dir, NECK_FILE))
    else:
        logger.info(f"expert folder {expert_dir!r} has no {NECK_FILE}: the expert keeps its source's BNNeck "
                    f"({source_weights})")
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def build_merged_base(cfg, source_weights: Sequence[str], expert_dirs: Sequence[str]
                      ) -> tuple[nn.Module, List[LoRAExpert]]:
    """The stage-2 base: mean of the K source models (classifier excluded), the experts' mean BNNeck when every
    expert folder has one (else the sources' mean neck), and, for experts trained with biases, the mean of their
    biases (as the authors' code). Everything frozen. Returns (model, the K experts read from disk)."""
    if len(source_weights) != len(expert_dirs) or not source_weights:
        raise ValueError(f"need one source checkpoint per expert, got {len(source_weights)} checkpoints and "
                         f"{len(expert_dirs)} expert folders")
    model = build_model(cfg)
    states = []
    for path in source_weights:
        state = {k: v for k, v in load_model_state(path).items() if k != CLASSIFIER_KEY}
        _check_shapes(model, state, f"source checkpoint {path!r}")  # name the file before averaging
        states.append(state)
    _load_without_classifier(model, mean_state_dict(states), "the mean of the source checkpoints")
    experts = [load_expert(d) for d in expert_dirs]
    necks = [_load_neck(d) for d in expert_dirs]
    for d, n in zip(expert_dirs, necks):
        if n is not None:
            _check_shapes(model.heads, n, os.path.join(d, NECK_FILE))
    if all(n is not None for n in necks):
        _set_neck(model, mean_state_dict(necks), "the mean of the expert necks")
    else:
        lacking = [d for d, n in zip(expert_dirs, necks) if n is None]
        logger.info(f"expert folders {lacking} have no {NECK_FILE}: the merged model keeps the sources' mean BNNeck")
    biases = [trained_biases(e) for e in experts]
    if any(biases):
        load_mean_biases(vit_of(model), biases)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, experts


def build_gated_model(cfg, source_weights: Sequence[str], expert_dirs: Sequence[str], *,
                      gate: str | None = None) -> nn.Module:
    """Stage 2: the merged base with the K experts in every adapted layer, mixed by ``gate`` (default
    ``SAGE.GATE.KIND``). Trainable: the gates (w, tau) and the classifier."""
    model, experts = build_merged_base(cfg, source_weights, expert_dirs)
    vit = vit_of(model)
    build_gated_vit(vit, experts=[lora_factors(e) for e in experts], gate=gate or cfg.SAGE.GATE.KIND,
                    num_tokens=num_tokens_of(vit), gate_eps=float(cfg.SAGE.GATE.EPS),
                    tau_init=float(cfg.SAGE.GATE.TAU_INIT))
    model.heads.weight.requires_grad_(True)
    return model


def expert_deltas(experts: Sequence[LoRAExpert]) -> List[Dict[str, LowRankDelta]]:
    """Per expert: layer name -> its delta as factors ``(s * B) @ A``."""
    return [{name: LowRankDelta(B=b * s, A=a) for name, (a, b, s) in lora_factors(e).items()} for e in experts]


def merge_kwargs(cfg, row: str) -> dict:
    """Arguments of the merge function behind results row ``row`` (a key of ``MERGE_ROWS``), from SAGE.MERGE."""
    m = cfg.SAGE.MERGE
    scale, density = {"scale": float(m.SCALE)}, {"density": float(m.DENSITY)}
    dare = {"drop_rate": float(m.DROP_RATE), "seed": int(m.SEED)}
    knots = {"ties": density, "dare": dare}.get(str(m.KNOTS_COMBINATION), {})
    return {"lora_avg": {}, "task_arithmetic": scale,
            "ties": {**scale, **density, "trim_scope": str(m.TRIM_SCOPE)}, "dare": {**scale, **dare},
            "knots": {"combination": str(m.KNOTS_COMBINATION), "keep": str(m.KNOTS_KEEP), **scale, **knots},
            "tsv_merge": scale}[row]


def build_static_merge_model(cfg, source_weights: Sequence[str], expert_dirs: Sequence[str], row: str
                             ) -> nn.Module:
    """A training-free baseline: the merged base with ``W += merged delta`` in every adapted layer, the delta from
    ``plugins.tuners.merge`` (row -> method in ``MERGE_ROWS``, arguments from ``SAGE.MERGE``)."""
    if row not in MERGE_ROWS:
        raise ValueError(f"unknown static merge {row!r}; expected one of {sorted(MERGE_ROWS)}")
    model, experts = build_merged_base(cfg, source_weights, expert_dirs)
    method = MERGE_ROWS[row]
    merged = merge_state_dicts(expert_deltas(experts), method, progress=True, **merge_kwargs(cfg, row))
    modules = dict(vit_of(model).named_modules())
    with torch.no_grad():
        for name, delta in merged.items():
            layer = modules.get(name)
            if not isinstance(layer, nn.Linear) or isinstance(layer, GatedLoRALinear):
                raise KeyError(f"merged layer {name!r} is not a plain nn.Linear of the ViT")
            layer.weight += delta.to(layer.weight)
    return model
