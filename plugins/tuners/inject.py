"""Put LoRA adapters into a backbone: our own layers by a per-family target map, or peft's layers for SAGE.

Two paths:

- ``inject_adapters`` (any family of ``plugins.tuners.targets.TARGET_MAPS``: timm ViT, open_clip image and text
  towers) puts this package's layers in place: ``LoRALinear`` on linear targets, ``LoRAMultiheadAttention`` on
  attention targets. Our own layers are needed there because peft cannot adapt q, k and v of the packed
  ``in_proj_weight`` of an ``nn.MultiheadAttention`` separately (its attention layer adapts the whole packed
  projection together with ``out_proj``), and a peft target ``"out_proj"`` wraps a module that
  ``nn.MultiheadAttention.forward`` never calls (it reads ``out_proj.weight`` directly), so that adapter would
  be silently ignored. ``merge_adapters`` folds them back into plain layers; ``lora_parameter_count`` counts
  them (and peft's).
- ``inject_lora`` (peft, SAGE) stays for adapters that must live in peft's file format (expert banks): its
  targets are exactly the four linears of every timm ViT block (``blocks.<i>.attn.qkv``, ``.attn.proj``,
  ``.mlp.fc1``, ``.mlp.fc2``; 48 modules on ViT-B). A bare name list ``["qkv", "proj", "fc1", "fc2"]`` would also
  match ``patch_embed.proj`` (a conv), which the SAGE expert does not adapt, so the target is a full-name regex.
  ``inject_gated_lora`` then puts K frozen peft experts into one ``GatedLoRALinear`` per linear.
"""
import re
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from ..layers.gated_lora import GatedLoRALinear
from ..layers.lora import LoRALinear
from ..layers.lora_attention import LoRAMultiheadAttention
from ..layers.low_rank import LoRAFactors
from .expert_bank import lora_factors_from_peft  # noqa: F401  (peft -> factors lives in expert_bank)
from .targets import AttentionTarget, detect_family, find_targets, get_target_map, replace_module

# Full-name regex (peft matches a string ``target_modules`` with re.fullmatch); any prefix before ``blocks.``.
VIT_BLOCK_LINEARS = r"(.*\.)?blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"


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
    """Number of LoRA parameters (``lora_A``/``lora_B``) in ``model``, optionally for one peft adapter: peft's
    layers, this package's ``LoRALinear`` / ``LoRAMultiheadAttention`` and the experts of gated layers alike."""
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
        replace_module(model, name, layer)
        replaced[name] = layer
    return replaced


def remove_peft_layers(model: nn.Module) -> nn.Module:
    """Replace every peft LoRA layer in ``model`` by its base layer (adapters dropped, nothing merged)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            replace_module(model, name, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


def inject_adapters(model: nn.Module, *, family: Optional[str] = None, targets: Sequence[str], rank: int,
                    alpha: float, dropout: float = 0.0, blocks: Optional[Sequence[int]] = None) -> List[str]:
    """Put our LoRA layers on ``targets`` of every tower of ``family`` in ``model`` (in place).

    Linear targets get a ``LoRALinear`` (base at ``<name>.base``), attention targets a ``LoRAMultiheadAttention``
    holding all the q/k/v/out targets of that attention (base at ``<name>.base_layer``). New LoRA parameters take
    the device and dtype of the layer they adapt and start at B = 0, so the model's output is unchanged.

    Freezing: only the base weights and biases of the wrapped layers are frozen; every other parameter keeps its
    ``requires_grad`` (norms, embeddings, heads, blocks left out by ``blocks``). To train the adapters only, call
    ``model.requires_grad_(False)`` before injecting.

    Args:
        model: the model to adapt; any module containing towers of the family.
        family: a key of ``plugins.tuners.targets.TARGET_MAPS``; ``None`` detects it (an open_clip ``CLIP``,
            which holds two towers, needs it: ``"open_clip_visual"`` or ``"open_clip_text"``).
        targets: short target names of the family, e.g. ``["q", "v"]`` (open_clip) or ``["qkv", "fc1"]`` (timm).
        rank: r of every adapter (> 0).
        alpha: LoRA alpha; updates are scaled by ``alpha / rank``.
        dropout: dropout on the input of the low-rank branches.
        blocks: transformer block indices to adapt (``None``: all).
    Returns:
        the full names of the adapted modules, in model order (an attention module once, whatever its targets).
    Raises:
        KeyError for an unknown family or target (naming the valid ones); ValueError when a target matches nothing,
        a block does not exist, or a target already carries an adapter (ours or peft's).
    """
    if rank <= 0:
        raise ValueError(f"LoRA rank must be > 0, got {rank}")
    family = detect_family(model) if family is None else family
    get_target_map(family)  # KeyError naming the known families
    parts: Dict[str, List[str]] = {}  # module name -> attention parts (empty list for a linear)
    modules: Dict[str, nn.Module] = {}
    for site in find_targets(model, family, targets, blocks):
        where = f"target {site.target!r} of family {family!r}: module {site.name!r}"
        if isinstance(site.module, (LoRALinear, LoRAMultiheadAttention)) or hasattr(site.module, "base_layer"):
            raise ValueError(f"{where} already carries an adapter: merge_adapters (or remove_peft_layers) first")
        expected = nn.MultiheadAttention if isinstance(site.spec, AttentionTarget) else nn.Linear
        if not isinstance(site.module, expected):
            raise ValueError(f"{where} is a {type(site.module).__name__}, expected {expected.__name__}")
        modules[site.name] = site.module
        parts.setdefault(site.name, [])
        if isinstance(site.spec, AttentionTarget):
            parts[site.name].append(site.spec.part)
    for name, module in modules.items():
        if parts[name]:
            layer = LoRAMultiheadAttention(module, targets=parts[name], rank=rank, alpha=alpha, dropout=dropout)
        else:
            layer = LoRALinear(module, rank=rank, alpha=alpha, dropout=dropout)
        layer.train(module.training)  # the new dropout follows the adapted layer's mode
        replace_module(model, name, layer)
    return list(modules)


def merge_adapters(model: nn.Module) -> List[str]:
    """Replace every ``LoRALinear`` / ``LoRAMultiheadAttention`` of ``model`` by a plain ``nn.Linear`` /
    ``nn.MultiheadAttention`` with ``W + s B A`` folded in (in place): same outputs (dropout aside), the original
    module names and state-dict keys, no adapter parameters. Merged weights keep the base's ``requires_grad``.

    Returns:
        the names of the merged modules, in model order.
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (LoRALinear, LoRAMultiheadAttention))}
    for name, layer in layers.items():
        replace_module(model, name, layer.merged())
    return list(layers)
