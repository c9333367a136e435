"""Put LoRA adapters into a ViT: single experts through peft, K frozen experts through a gated layer.

Targets are exactly the four linears of every transformer block (``blocks.<i>.attn.qkv``, ``.attn.proj``,
``.mlp.fc1``, ``.mlp.fc2``; 48 modules on ViT-B). A bare name list ``["qkv", "proj", "fc1", "fc2"]`` would also
match ``patch_embed.proj`` (a conv), which the SAGE expert does not adapt, so the target is a full-name regex.
"""
import re
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from ..layers.gated_lora import GatedLoRALinear

# Full-name regex (peft matches a string ``target_modules`` with re.fullmatch); any prefix before ``blocks.``.
VIT_BLOCK_LINEARS = r"(.*\.)?blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"

# (A (r, d_in), B (d_out, r), scaling) of one expert in one layer.
LoRAFactors = Tuple[torch.Tensor, torch.Tensor, float]


def target_module_names(model: nn.Module, pattern: str = VIT_BLOCK_LINEARS) -> List[str]:
    """Names of the ``nn.Linear`` modules of ``model`` (also when already wrapped by a peft LoRA layer, whose
    ``base_layer`` is the linear) whose full name matches ``pattern``."""
    rx = re.compile(pattern)
    return [n for n, m in model.named_modules()
            if isinstance(getattr(m, "base_layer", m), nn.Linear) and rx.fullmatch(n)]


def make_lora_config(*, rank: int, alpha: float, dropout: float = 0.0, train_bias: bool = False,
                     target_modules: str = VIT_BLOCK_LINEARS) -> LoraConfig:
    """peft ``LoraConfig`` for one expert. ``train_bias`` trains every bias of the model (peft ``bias="all"``),
    as the SAGE authors' code does; the trained biases are then saved with the expert."""
    if rank <= 0:
        raise ValueError(f"LoRA rank must be > 0, got {rank}")
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                      bias="all" if train_bias else "none")


def inject_lora(model: nn.Module, *, rank: int, alpha: float, dropout: float = 0.0, train_bias: bool = False,
                adapter_name: str = "default", target_modules: str = VIT_BLOCK_LINEARS) -> nn.Module:
    """Insert one peft LoRA adapter into ``model`` in place (no PeftModel wrapper, so module names and
    fast-reid checkpoints keep their layout). Every non-LoRA parameter of ``model`` is frozen except biases
    when ``train_bias``. Pass the ViT itself (e.g. ``backbone.vit``) so the expert file is portable.

    Returns ``model`` (the same object).
    """
    names = target_module_names(model, target_modules)
    if not names:
        raise ValueError(f"no nn.Linear in {type(model).__name__} matches target pattern {target_modules!r}")
    config = make_lora_config(rank=rank, alpha=alpha, dropout=dropout, train_bias=train_bias,
                              target_modules=target_modules)
    was_training = model.training
    model = inject_adapter_in_model(config, model, adapter_name=adapter_name)
    return model.train(was_training)  # new dropout modules follow the model's train/eval mode


def lora_parameter_count(model: nn.Module, adapter_name: Optional[str] = None) -> int:
    """Number of LoRA parameters (``lora_A``/``lora_B``) in ``model``, optionally for one adapter."""
    total = 0
    for name, p in model.named_parameters():
        parts = name.split(".")
        if "lora_A" in parts or "lora_B" in parts:
            if adapter_name is None or adapter_name in parts:
                total += p.numel()
    return total


def inject_gated_lora(model: nn.Module, experts: Sequence[Mapping[str, LoRAFactors]], *,
                      make_gate: Optional[Callable[[str, nn.Linear], Optional[nn.Module]]] = None,
                      ) -> Dict[str, GatedLoRALinear]:
    """Replace every linear named in the experts by a :class:`GatedLoRALinear` holding all K experts.

    Args:
        model: the shared backbone (plain linears, no peft layers); modified in place.
        experts: K mappings ``module name -> (A, B, scaling)``, names relative to ``model``; all K must adapt
            the same modules.
        make_gate: ``(module name, base linear) -> gate module`` (see ``GatedLoRALinear``); ``None`` or a
            ``None`` return gives the uniform average of the experts (LoRA-Avg).
    Returns:
        ``name -> GatedLoRALinear`` for the replaced modules, in model order.
    """
    if not experts:
        raise ValueError("inject_gated_lora needs at least one expert")
    names = list(experts[0].keys())
    for k, e in enumerate(experts[1:], start=1):
        if set(e.keys()) != set(names):
            diff = sorted(set(e.keys()) ^ set(names))[:5]
            raise ValueError(f"expert {k} adapts different modules than expert 0 (e.g. {diff})")
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise KeyError(f"expert modules not found in {type(model).__name__}: {missing[:5]}")
    replaced = {}
    for name in [n for n in modules if n in set(names)]:  # model order
        base = modules[name]
        if not isinstance(base, nn.Linear):
            raise KeyError(f"expert module {name!r} is not an nn.Linear in {type(model).__name__} "
                           f"(found {type(base).__name__})")
        factors = [e[name] for e in experts]
        gate = make_gate(name, base) if make_gate is not None else None
        layer = GatedLoRALinear(base, lora_A=[f[0] for f in factors], lora_B=[f[1] for f in factors],
                                scaling=[f[2] for f in factors], gate=gate)
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, layer)
        replaced[name] = layer
    return replaced


def lora_factors_from_peft(model: nn.Module, adapter_name: str) -> Dict[str, LoRAFactors]:
    """``module name -> (A, B, scaling)`` of peft adapter ``adapter_name`` injected in ``model``."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
            if getattr(module, "use_dora", {}).get(adapter_name, False):
                raise NotImplementedError(f"{name}: DoRA adapters are not supported")
            out[name] = (module.lora_A[adapter_name].weight.detach(), module.lora_B[adapter_name].weight.detach(),
                         float(module.scaling[adapter_name]))
    if not out:
        raise KeyError(f"no peft LoRA layer holds an adapter named {adapter_name!r}")
    return out


def remove_peft_layers(model: nn.Module) -> nn.Module:
    """Replace every peft LoRA layer in ``model`` by its base layer (adapters dropped, nothing merged)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model
