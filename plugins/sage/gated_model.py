"""The gated ViT of stage 2: the K target experts injected into a ViT's block linears, mixed per sample by a
registered router (``plugins.sage.rows.GATES``: "sage" -> ``SAGEGate``, "mole" -> ``MoLEGate``, "avg" -> no router,
the uniform average). The backbone it is injected into (the mean of the source models) is built by
``plugins.sage.builders.build_merged_base``, the one route to the merged base."""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence

from torch import nn

from ..layers.gated_lora import GatedLoRALinear
from ..registry import ROUTER_REGISTRY
from ..tuners.inject import LoRAFactors, inject_gated_lora
from .gate import SAGEGate  # noqa: F401  (registers SAGEGate)
from .mole_gate import MoLEGate  # noqa: F401  (registers MoLEGate)
from .rows import gate_router

__all__ = ["router_factory", "build_gated_vit", "gate_parameters"]


def router_factory(gate: str, *, num_experts: int, num_tokens: int, eps: float = 1e-6, tau_init: float = 1.0
                   ) -> Optional[Callable[[str, nn.Linear], nn.Module]]:
    """``(layer name, base linear) -> router`` for gate kind ``gate``; None for "avg" (uniform average)."""
    name = gate_router(gate)
    if not name:
        return None
    cls = ROUTER_REGISTRY.get(name)
    return lambda layer, base: cls(num_experts=num_experts, num_tokens=num_tokens, out_features=base.out_features,
                                   eps=eps, tau_init=tau_init)


def build_gated_vit(vit: nn.Module, *, experts: Sequence[Mapping[str, LoRAFactors]], gate: str, num_tokens: int,
                    gate_eps: float = 1e-6, tau_init: float = 1.0) -> Dict[str, GatedLoRALinear]:
    """Turn a plain ViT into the gated multi-expert model, in place (its weights are kept as they are).

    Args:
        vit: a ViT without adapters (the merged base's ``backbone.vit``).
        experts: K expert factor maps ``module name -> (A, B, scaling)`` (``plugins.tuners.expert_bank.lora_factors``
            / ``plugins.tuners.inject.lora_factors_from_peft``).
        gate: "sage", "mole" or "avg".
        num_tokens: N (129 for ViT-B/16 at 256x128).
        gate_eps: eps of the gate's token-row L2 normalisation.
        tau_init: initial gate temperature.
    Returns:
        ``module name -> GatedLoRALinear``.
    """
    make_gate = router_factory(gate, num_experts=len(experts), num_tokens=num_tokens, eps=gate_eps,
                               tau_init=tau_init)
    return inject_gated_lora(vit, experts, make_gate=make_gate)


def gate_parameters(model: nn.Module) -> Dict[str, int]:
    """Counts of gate parameters in ``model``: {"weight": projections (w or P), "tau": temperatures}."""
    counts = {"weight": 0, "tau": 0}
    for m in model.modules():
        if isinstance(m, GatedLoRALinear) and m.gate is not None:
            counts["weight"] += m.gate.weight.numel()
            counts["tau"] += m.gate.tau.numel()
    return counts
