"""Save and load LoRA experts in peft's adapter layout, without unpickling anything.

One expert = one folder with ``adapter_config.json`` (peft ``LoraConfig``) and ``adapter_model.safetensors``
(keys ``base_model.model.<module>.lora_A.weight`` etc., as ``PeftModel.save_pretrained`` writes them), so an
expert saved from a timm ViT also loads with ``PeftModel.from_pretrained(timm_vit, folder)``. A bank of K
experts is a folder of such folders; experts are ordered by folder name unless names are given.
"""
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from safetensors.torch import save_file
from torch import nn

from ..compat.checkpoint import read_safetensors
from ..layers.low_rank import LoRAFactors

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# The key prefix PeftModel adds (PeftModel.base_model = LoraModel, LoraModel.model = the wrapped model).
PEFT_PREFIX = "base_model.model."


@dataclass
class LoRAExpert:
    """One expert read from disk. ``tensors`` keys are relative to the adapted model (prefix stripped):
    ``<module>.lora_A.weight`` (r, d_in), ``<module>.lora_B.weight`` (d_out, r), and ``<name>.bias`` when the
    expert was trained with biases."""
    name: str
    config: LoraConfig
    tensors: Dict[str, torch.Tensor]


def expert_from_model(model: nn.Module, adapter_name: str = "default") -> LoRAExpert:
    """Adapter ``adapter_name`` of ``model`` (a module with peft LoRA layers injected, e.g. by
    ``plugins.tuners.inject.inject_lora``) as the :class:`LoRAExpert` that saving and loading it gives: its
    ``LoraConfig`` and peft's adapter state dict (tensors shared with the model, not copied)."""
    configs = getattr(model, "peft_config", None)
    if not configs or adapter_name not in configs:
        raise KeyError(f"model has no peft adapter named {adapter_name!r} (has {list(configs or {})})")
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    if not state:
        raise RuntimeError(f"adapter {adapter_name!r} has no weights to save")
    return LoRAExpert(name=adapter_name, config=configs[adapter_name], tensors=state)


def save_expert(model: nn.Module, directory: str, *, adapter_name: str = "default") -> None:
    """Write adapter ``adapter_name`` of ``model`` (see :func:`expert_from_model`) to ``directory`` in peft's
    layout."""
    expert = expert_from_model(model, adapter_name)
    os.makedirs(directory, exist_ok=True)
    expert.config.save_pretrained(directory)
    save_file({PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in expert.tensors.items()},
              os.path.join(directory, WEIGHTS_NAME), metadata={"format": "pt"})


def load_expert(directory: str, *, name: Optional[str] = None) -> LoRAExpert:
    """Read one expert folder (safetensors only; a pickled ``adapter_model.bin`` is refused)."""
    config_path = os.path.join(directory, CONFIG_NAME)
    weights_path = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"expert folder {directory!r} has no {CONFIG_NAME}")
    if not os.path.isfile(weights_path):
        extra = " (found a pickled adapter_model.bin, which is not loaded: convert it to safetensors)" \
            if os.path.isfile(os.path.join(directory, "adapter_model.bin")) else ""
        raise FileNotFoundError(f"expert folder {directory!r} has no {WEIGHTS_NAME}{extra}")
    try:
        with open(config_path) as f:
            raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from None
    if not isinstance(raw, dict) or raw.get("peft_type") != "LORA":
        found = raw.get("peft_type") if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{config_path}: peft_type is {found!r}, expected 'LORA'")
    try:
        config = LoraConfig.from_pretrained(directory)
    except (TypeError, ValueError) as err:  # unknown / ill-typed fields
        raise ValueError(f"{config_path} is not a valid peft LoraConfig: {err}") from None
    for field, ok in (("r", isinstance(config.r, int) and config.r > 0),
                      ("lora_alpha", isinstance(config.lora_alpha, (int, float)))):
        if not ok:  # peft accepts any value here and fails later, far from the file
            raise ValueError(f"{config_path}: {field} is {getattr(config, field)!r}, expected a positive number")
    tensors = read_safetensors(weights_path)
    bad = [k for k in tensors if not k.startswith(PEFT_PREFIX)]
    if bad:
        raise ValueError(f"{weights_path}: keys without the peft prefix {PEFT_PREFIX!r}: {bad[:3]}")
    tensors = {k[len(PEFT_PREFIX):]: v for k, v in tensors.items()}
    _check_rank(tensors, config, directory)
    return LoRAExpert(name=name or os.path.basename(os.path.normpath(directory)), config=config, tensors=tensors)


def _check_rank(tensors: Mapping[str, torch.Tensor], config: LoraConfig, directory: str) -> None:
    """Every factor has the rank its own ``adapter_config.json`` states (lora_A (r, d_in), lora_B (d_out, r))."""
    if config.rank_pattern:
        return  # per-module ranks: checked against the model when loaded
    for key, t in tensors.items():
        if key.endswith("lora_A.weight"):
            rank = t.shape[0] if t.dim() == 2 else None
        elif key.endswith("lora_B.weight"):
            rank = t.shape[1] if t.dim() == 2 else None
        else:
            continue
        if rank != config.r:
            raise KeyError(f"expert {directory!r}: {key} has shape {tuple(t.shape)} but its {CONFIG_NAME} says "
                           f"r = {config.r}")


def load_expert_into(model: nn.Module, directory: str, *, adapter_name: str = "default") -> LoRAExpert:
    """Inject the expert saved in ``directory`` into ``model`` as adapter ``adapter_name`` and load its weights.
    Raises if any LoRA weight of the adapter is missing from the file or the file has weights the model lacks."""
    expert = load_expert(directory, name=adapter_name)
    was_training = model.training
    inject_adapter_in_model(expert.config, model, adapter_name=adapter_name)
    model.train(was_training)  # new dropout modules follow the model's train/eval mode
    try:
        result = set_peft_model_state_dict(model, expert.tensors, adapter_name=adapter_name)
    except RuntimeError as err:  # torch's size-mismatch report: one line per tensor; name the folder first
        lines = [ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln]
        raise KeyError(f"expert {directory!r} does not fit the model: {len(lines)} tensors of another width, "
                       f"e.g. {lines[0] if lines else str(err).splitlines()[0]}") from None
    missing = [k for k in result.missing_keys if f".{adapter_name}." in k and "lora_" in k]
    if missing or result.unexpected_keys:
        raise KeyError(f"expert {directory!r} does not fit the model: missing {missing[:3]}, "
                       f"unexpected {list(result.unexpected_keys)[:3]}")
    return expert


def load_expert_bank(directory: str, names: Optional[Sequence[str]] = None) -> List[LoRAExpert]:
    """Load the experts under ``directory`` (every sub-folder holding an adapter config, sorted by name, or
    the given ``names`` in that order)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"expert bank folder {directory!r} does not exist")
    if names is None:
        names = sorted(d for d in os.listdir(directory)
                       if os.path.isfile(os.path.join(directory, d, CONFIG_NAME)))
        if not names:
            raise FileNotFoundError(f"expert bank {directory!r} holds no expert folders with {CONFIG_NAME}")
    return [load_expert(os.path.join(directory, n), name=n) for n in names]


def expert_scaling(config: LoraConfig, module_name: str) -> float:
    """peft's residual scale for one module: alpha / r (alpha / sqrt(r) with rsLoRA)."""
    if config.rank_pattern or config.alpha_pattern:
        raise NotImplementedError("experts with per-module rank_pattern/alpha_pattern are not supported")
    if config.use_dora:
        raise NotImplementedError("DoRA experts are not supported (the gate mixes plain LoRA residuals)")
    return config.lora_alpha / (config.r ** 0.5 if config.use_rslora else config.r)


def lora_factors(expert: LoRAExpert) -> Dict[str, LoRAFactors]:
    """``module name -> (A (r, d_in), B (d_out, r), scaling)`` of an expert (read from disk, or taken from a live
    model by :func:`expert_from_model`): the one conversion from peft's format to the factors of
    ``plugins.layers.low_rank``."""
    out = {}
    for key, a in expert.tensors.items():
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            b = expert.tensors.get(module + ".lora_B.weight")
            if b is None:
                raise KeyError(f"expert {expert.name!r}: {key} has no matching lora_B weight")
            out[module] = (a, b, expert_scaling(expert.config, module))
    if not out:
        raise ValueError(f"expert {expert.name!r} holds no LoRA factors")
    return out


def lora_factors_from_peft(model: nn.Module, adapter_name: str) -> Dict[str, LoRAFactors]:
    """``module name -> (A, B, scaling)`` of peft adapter ``adapter_name`` injected in ``model``: the factors its
    saved file would give (tensors shared with the model)."""
    return lora_factors(expert_from_model(model, adapter_name))


def trained_biases(expert: LoRAExpert) -> Dict[str, torch.Tensor]:
    """``parameter name -> bias`` saved with an expert trained with biases (empty otherwise). Names are those of
    the plain model: peft's ``.base_layer`` (the wrapped linear) is removed."""
    return {k.replace(".base_layer.", "."): v for k, v in expert.tensors.items()
            if k.endswith("bias") and "lora_" not in k}
