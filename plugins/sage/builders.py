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
from typing import Dict, List, Mapping, Sequence

import torch
from fastreid.modeling import build_model
from safetensors.torch import save_file
from torch import nn

from ..compat.checkpoint import check_state, load_checkpoint_file, load_state_checked, read_safetensors
from ..layers.gated_lora import GatedLoRALinear
from ..tuners.expert_bank import LoRAExpert, load_expert, load_expert_into, lora_factors, save_expert, trained_biases
from ..tuners.inject import inject_lora
from ..tuners.merge import merge_state_dicts
from ..tuners.merge_backbones import mean_state_dict
from ..tuners.merge_svd import LowRankDelta
from .gated_model import build_gated_vit
from .rows import STATIC_MERGES, row

__all__ = ["CLASSIFIER_KEY", "NECK_FILE", "vit_of", "num_tokens_of", "load_model_state", "load_source_weights",
           "mean_source_state", "build_mean_source_model", "build_expert_model", "save_expert_with_neck",
           "load_expert_model", "build_merged_base", "load_mean_biases", "build_gated_model", "load_gated_model",
           "expert_deltas", "merge_kwargs", "build_static_merge_model"]

logger = logging.getLogger("fastreid." + __name__)

# fast-reid EmbeddingHead's classifier: its row count is the class count of the data the model was trained on
# (source identities, target pseudo-identities), so it is the one tensor never averaged nor carried over.
CLASSIFIER_KEY = "heads.weight"
NECK_FILE = "neck.safetensors"


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
    read with ``weights_only=True``); a state saved from a DistributedDataParallel wrapper loses its ``module.``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    state = read_safetensors(path) if path.endswith(".safetensors") else load_checkpoint_file(path)["model"]
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_source_weights(model: nn.Module, path: str) -> None:
    """Load a source checkpoint into ``model``, all keys but the source classifier (strict otherwise)."""
    load_state_checked(model, load_model_state(path), what=f"source checkpoint {path!r}",
                       ignore_keys=(CLASSIFIER_KEY,))


def mean_source_state(model: nn.Module, source_weights: Sequence[str]) -> Dict[str, torch.Tensor]:
    """The element-wise mean of the K source checkpoints: every key of the fast-reid model (backbone, BNNeck)
    except the classifier ``heads.weight``, checked file by file against ``model`` (the error names the file;
    ``model`` itself is not changed).

    The exclusion rule of the merged base (the one route: Avg + ViT, the stage-1 expert on the mean backbone, static
    merges, LoRAHub, the gated models): exactly the classifier, whose class count differs between sources. The
    BNNeck is averaged like the backbone (sage.md: "all keys except classifier heads"); excluding everything under
    a "head" prefix (the former gated-ViT route) would also have left the neck out. BatchNorm step counters
    (``num_batches_tracked``: integers, unused with a momentum) differ between sources trained for different
    lengths: the largest is kept."""
    if not source_weights:
        raise ValueError("need at least one source checkpoint to average")
    states = []
    for path in source_weights:
        states.append(check_state(model, load_model_state(path), what=f"source checkpoint {path!r}",
                                  ignore_keys=(CLASSIFIER_KEY,)))
    counters = {k: max(s[k] for s in states) for k in states[0] if k.endswith("num_batches_tracked")}
    states = [{**s, **counters} for s in states]
    return mean_state_dict(states)


def build_mean_source_model(cfg, source_weights: Sequence[str]) -> nn.Module:
    """"Avg + ViT": the fast-reid model with the mean of the K source models (classifier excluded), frozen."""
    model = build_model(cfg)
    load_state_checked(model, mean_source_state(model, source_weights), ignore_keys=(CLASSIFIER_KEY,),
                       what=f"the mean of the source checkpoints {list(source_weights)}")
    for p in model.parameters():
        p.requires_grad_(False)
    return model


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
    load_state_checked(model.heads, neck, what=what, ignore_keys=(CLASSIFIER_KEY[len("heads."):],))


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
    """The stage-2 base: mean of the K source models (``mean_source_state``: classifier excluded), the experts'
    mean BNNeck when every expert folder has one (else the sources' mean neck), and, for experts trained with
    biases, the mean of their biases (as the authors' code). Everything frozen. Returns (model, the K experts read
    from disk)."""
    if len(source_weights) != len(expert_dirs) or not source_weights:
        raise ValueError(f"need one source checkpoint per expert, got {len(source_weights)} checkpoints and "
                         f"{len(expert_dirs)} expert folders")
    model = build_mean_source_model(cfg, source_weights)
    experts = [load_expert(d) for d in expert_dirs]
    necks = [_load_neck(d) for d in expert_dirs]
    if all(n is not None for n in necks):
        for d, n in zip(expert_dirs, necks):  # name the file before averaging
            _set_neck(model, n, os.path.join(d, NECK_FILE))
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


def load_mean_biases(vit: nn.Module, expert_biases: Sequence[Mapping[str, torch.Tensor]]) -> None:
    """Overwrite the ViT's biases with the mean of the biases the K experts trained in stage 1 (as the authors'
    code does when biases train). Raises when only some experts carry biases or a name is not a ViT parameter."""
    if not all(expert_biases):
        raise ValueError("only some experts carry trained biases; cannot average them")
    biases = mean_state_dict(expert_biases)
    params = dict(vit.named_parameters())
    unknown = [k for k in biases if k not in params]
    if unknown:
        raise KeyError(f"expert biases not in the ViT: {unknown[:3]}")
    with torch.no_grad():
        for k, v in biases.items():
            params[k].copy_(v)


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


def load_gated_model(cfg, source_weights: Sequence[str], expert_dirs: Sequence[str], checkpoint: str, *,
                     gate: str) -> nn.Module:
    """A trained stage-2 model for evaluation / analysis: the gated model built from the sources and experts, then
    ``checkpoint`` loaded over it, frozen. Only the classifier ``heads.weight`` is skipped (its row count is the
    number of pseudo-identities of the last clustering, unknown here, and evaluation does not use it); any other
    missing, unexpected or differently shaped tensor is an error naming the file and the gate kind (e.g. a
    checkpoint of another gate: a MoLE gate has the SAGE gate's keys, not its shapes)."""
    model = build_gated_model(cfg, source_weights, expert_dirs, gate=gate)
    load_state_checked(model, load_model_state(checkpoint), ignore_keys=(CLASSIFIER_KEY,),
                       what=f"stage-2 checkpoint {checkpoint!r} (gated model built with gate {gate!r})")
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def expert_deltas(experts: Sequence[LoRAExpert]) -> List[Dict[str, LowRankDelta]]:
    """Per expert: layer name -> its delta as factors ``(s * B) @ A``."""
    return [{name: LowRankDelta(B=b * s, A=a) for name, (a, b, s) in lora_factors(e).items()} for e in experts]


def merge_kwargs(cfg, key: str) -> dict:
    """Arguments of the merge function behind static-merge row ``key`` (``plugins.sage.rows``): the row's own
    (``merge_options``, e.g. KnOTS' combination) + the ones ``SAGE.MERGE`` sets for that method."""
    spec, m = row(key), cfg.SAGE.MERGE
    scale, density = {"scale": float(m.SCALE)}, {"density": float(m.DENSITY)}
    dare = {"drop_rate": float(m.DROP_RATE), "seed": int(m.SEED)}
    if spec.merge == "knots":
        combination = spec.merge_options["combination"]
        extra = {"ties": density, "dare": dare}.get(combination, {})
        return {"combination": combination, "keep": str(m.KNOTS_KEEP), **scale, **extra}
    return {"lora_average": {}, "task_arithmetic": scale,
            "ties": {**scale, **density, "trim_scope": str(m.TRIM_SCOPE)}, "dare": {**scale, **dare},
            "tsv_merge": scale}[spec.merge]


def build_static_merge_model(cfg, source_weights: Sequence[str], expert_dirs: Sequence[str], key: str
                             ) -> nn.Module:
    """A training-free baseline: the merged base with ``W += merged delta`` in every adapted layer, the delta from
    ``plugins.tuners.merge`` (the row's ``merge`` method, arguments from ``merge_kwargs``)."""
    if key not in STATIC_MERGES:
        raise ValueError(f"unknown static merge {key!r}; expected one of {list(STATIC_MERGES)}")
    model, experts = build_merged_base(cfg, source_weights, expert_dirs)
    merged = merge_state_dicts(expert_deltas(experts), row(key).merge, progress=True, **merge_kwargs(cfg, key))
    modules = dict(vit_of(model).named_modules())
    with torch.no_grad():
        for name, delta in merged.items():
            layer = modules.get(name)
            if not isinstance(layer, nn.Linear) or isinstance(layer, GatedLoRALinear):
                raise KeyError(f"merged layer {name!r} is not a plain nn.Linear of the ViT")
            layer.weight += delta.to(layer.weight)
    return model
