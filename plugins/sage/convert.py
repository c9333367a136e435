"""Build SAGE's stage-2 model: the mean of the K source backbones with the K target experts gated per layer."""
from typing import Callable, Dict, Mapping, Optional, Sequence

import torch
from torch import nn

from ..layers.gated_lora import GatedLoRALinear
from ..tuners.expert_bank import LoRAExpert, lora_factors, trained_biases
from ..tuners.inject import LoRAFactors, inject_gated_lora, lora_factors_from_peft, remove_peft_layers
from ..tuners.merge_backbones import mean_state_dict
from .gate import SAGEGate
from .mole_gate import MoLEGate

GATE_KINDS = ("sage", "mole", "avg")


def gate_factory(kind: str, *, num_experts: int, num_tokens: int, eps: float = 1e-6,
                 tau_init: float = 1.0) -> Optional[Callable[[str, nn.Linear], Optional[nn.Module]]]:
    """``(name, base linear) -> gate`` for ``kind`` in ``GATE_KINDS`` ("avg" = LoRA-Avg, no gate)."""
    if kind == "sage":
        return lambda name, base: SAGEGate(num_tokens=num_tokens, out_features=base.out_features, eps=eps,
                                           tau_init=tau_init)
    if kind == "mole":
        return lambda name, base: MoLEGate(num_experts=num_experts, num_tokens=num_tokens,
                                           out_features=base.out_features, eps=eps, tau_init=tau_init)
    if kind == "avg":
        return None
    raise ValueError(f"unknown gate kind {kind!r}; expected one of {GATE_KINDS}")


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


def build_gated_vit(vit: nn.Module, *, experts: Sequence[Mapping[str, LoRAFactors]], gate: str, num_tokens: int,
                    source_state_dicts: Sequence[Mapping[str, torch.Tensor]] = (),
                    expert_biases: Sequence[Mapping[str, torch.Tensor]] = (),
                    exclude_prefixes: Sequence[str] = ("head",), gate_eps: float = 1e-6,
                    tau_init: float = 1.0) -> Dict[str, GatedLoRALinear]:
    """Turn a plain ViT into the gated multi-expert model, in place.

    Args:
        vit: a ViT without adapters (its weights are replaced when ``source_state_dicts`` is given).
        experts: K expert factor maps ``module name -> (A, B, scaling)`` (``lora_factors`` /
            ``lora_factors_from_peft``).
        gate: "sage", "mole" or "avg".
        num_tokens: N (129 for ViT-B/16 at 256x128).
        source_state_dicts: the K source backbones (keys relative to ``vit``); their element-wise mean
            becomes the shared backbone. Empty: keep ``vit``'s weights.
        expert_biases: per expert, the biases trained in stage 1 (``trained_biases``); when given, their mean
            overwrites the backbone biases, as the authors' code does.
        exclude_prefixes: state-dict keys not averaged (classifier heads).
        gate_eps: eps of the gate's token-row L2 normalisation.
        tau_init: initial gate temperature.
    Returns:
        ``module name -> GatedLoRALinear``.
    """
    if source_state_dicts:
        missing, unexpected = vit.load_state_dict(
            mean_state_dict(source_state_dicts, exclude_prefixes=exclude_prefixes), strict=False)
        missing = [k for k in missing if not any(k.startswith(p) for p in exclude_prefixes)]
        if missing or unexpected:
            raise KeyError(f"source backbones do not fit the ViT: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    if expert_biases:
        if len(expert_biases) != len(experts):
            raise ValueError(f"got biases for {len(expert_biases)} experts, but {len(experts)} experts")
        load_mean_biases(vit, expert_biases)
    make_gate = gate_factory(gate, num_experts=len(experts), num_tokens=num_tokens, eps=gate_eps,
                             tau_init=tau_init)
    return inject_gated_lora(vit, experts, make_gate=make_gate)


def build_gated_vit_from_bank(vit: nn.Module, experts: Sequence[LoRAExpert], *, gate: str, num_tokens: int,
                              source_state_dicts: Sequence[Mapping[str, torch.Tensor]] = (),
                              use_expert_biases: bool = True, gate_eps: float = 1e-6,
                              tau_init: float = 1.0) -> Dict[str, GatedLoRALinear]:
    """``build_gated_vit`` from experts read by ``plugins.tuners.expert_bank.load_expert_bank``."""
    biases = [trained_biases(e) for e in experts]
    use = use_expert_biases and all(biases)
    if use_expert_biases and any(biases) and not use:
        raise ValueError("only some experts carry trained biases; cannot average them")
    return build_gated_vit(vit, experts=[lora_factors(e) for e in experts], gate=gate, num_tokens=num_tokens,
                           source_state_dicts=source_state_dicts, expert_biases=biases if use else (),
                           gate_eps=gate_eps, tau_init=tau_init)


def convert_peft_vit(vit: nn.Module, adapter_names: Sequence[str], *, gate: str,
                     num_tokens: int) -> Dict[str, GatedLoRALinear]:
    """Convert a ViT carrying K injected peft adapters (on one shared backbone) into the gated model."""
    experts = [lora_factors_from_peft(vit, n) for n in adapter_names]
    remove_peft_layers(vit)
    return build_gated_vit(vit, experts=experts, gate=gate, num_tokens=num_tokens)


def gate_parameters(model: nn.Module) -> Dict[str, int]:
    """Counts of gate parameters in ``model``: {"weight": projections (w or P), "tau": temperatures}."""
    counts = {"weight": 0, "tau": 0}
    for m in model.modules():
        if isinstance(m, (SAGEGate, MoLEGate)):
            counts["weight"] += m.weight.numel()
            counts["tau"] += m.tau.numel()
    return counts
