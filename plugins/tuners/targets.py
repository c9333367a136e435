"""Where LoRA adapters go in each backbone family: one entry of ``TARGET_MAPS`` per family.

A family entry says which modules are the roots of its towers (a timm ``VisionTransformer``, an open_clip image
tower, an open_clip text tower) and maps short target names to how a target is found below such a root:

- ``LinearTarget(module)``: an ``nn.Linear`` whose name relative to the root fully matches the regex ``module``;
- ``AttentionTarget(module, part)``: the ``part`` (q, k, v or out) of the ``nn.MultiheadAttention`` whose relative
  name fully matches ``module``.

Every regex has a named group ``block`` (the transformer block index), so adapters can be limited to some blocks.
Roots are found by type or structure, never by absolute name, so a tower anywhere inside a bigger model (a
fast-reid backbone, the plugin's CLIP encoders) is found too. Supporting a new backbone family is one more entry.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union

from torch import nn


@dataclass(frozen=True)
class LinearTarget:
    """An ``nn.Linear`` named (relative to its tower root) by the full-match regex ``module``."""
    module: str


@dataclass(frozen=True)
class AttentionTarget:
    """Projection ``part`` (``"q"``, ``"k"``, ``"v"`` or ``"out"``) of the ``nn.MultiheadAttention`` named
    (relative to its tower root) by the full-match regex ``module``."""
    module: str
    part: str


Target = Union[LinearTarget, AttentionTarget]


@dataclass(frozen=True)
class TargetMap(Mapping[str, Target]):
    """One backbone family: a mapping ``short target name -> Target`` plus how its tower roots are recognised.

    Attributes:
        description: what the family is (shown in errors).
        is_root: ``module -> bool``, true for the module at which the target regexes start.
        targets: ``short name -> LinearTarget | AttentionTarget`` (regexes relative to the root).
    """
    description: str
    is_root: Callable[[nn.Module], bool]
    targets: Mapping[str, Target]

    def __getitem__(self, name: str) -> Target:
        return self.targets[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.targets)

    def __len__(self) -> int:
        return len(self.targets)


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the full name ``name`` (a submodule of ``model``) in place of what is there."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _instance_of(qualified: str) -> Callable[[object], bool]:
    """``obj -> isinstance(obj, module:Class)``; false while ``module`` is not imported (then no instance exists),
    so checking a model never imports a library it does not use."""
    module_name, _, class_name = qualified.partition(":")

    def check(obj: object) -> bool:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        return cls is not None and isinstance(obj, cls)

    return check


_is_open_clip_transformer = _instance_of("open_clip.transformer:Transformer")


def _is_open_clip_text_tower(module: nn.Module) -> bool:
    # open_clip.model.CLIP (text tower at its root), open_clip's TextTransformer, or any module that took over
    # CLIP's text modules (the plugin's CLIPTextEncoder): a token embedding next to an open_clip Transformer.
    return (isinstance(getattr(module, "token_embedding", None), nn.Embedding)
            and _is_open_clip_transformer(getattr(module, "transformer", None)))


_OPEN_CLIP_BLOCK = r"transformer\.resblocks\.(?P<block>\d+)"
_OPEN_CLIP_TARGETS: Dict[str, Target] = {
    "q": AttentionTarget(_OPEN_CLIP_BLOCK + r"\.attn", "q"),
    "k": AttentionTarget(_OPEN_CLIP_BLOCK + r"\.attn", "k"),
    "v": AttentionTarget(_OPEN_CLIP_BLOCK + r"\.attn", "v"),
    "out": AttentionTarget(_OPEN_CLIP_BLOCK + r"\.attn", "out"),
    "c_fc": LinearTarget(_OPEN_CLIP_BLOCK + r"\.mlp\.c_fc"),
    "c_proj": LinearTarget(_OPEN_CLIP_BLOCK + r"\.mlp\.c_proj"),
}

TARGET_MAPS: Dict[str, TargetMap] = {
    "timm_vit": TargetMap(
        description="timm VisionTransformer (blocks.N.attn.qkv/proj, blocks.N.mlp.fc1/fc2)",
        is_root=_instance_of("timm.models.vision_transformer:VisionTransformer"),
        targets={
            "qkv": LinearTarget(r"blocks\.(?P<block>\d+)\.attn\.qkv"),
            "proj": LinearTarget(r"blocks\.(?P<block>\d+)\.attn\.proj"),
            "fc1": LinearTarget(r"blocks\.(?P<block>\d+)\.mlp\.fc1"),
            "fc2": LinearTarget(r"blocks\.(?P<block>\d+)\.mlp\.fc2"),
        }),
    "open_clip_visual": TargetMap(
        description="open_clip image tower (VisionTransformer, CLIP.visual: transformer.resblocks.N)",
        is_root=_instance_of("open_clip.transformer:VisionTransformer"),
        targets=_OPEN_CLIP_TARGETS),
    "open_clip_text": TargetMap(
        description="open_clip text tower (CLIP / TextTransformer: token_embedding + transformer.resblocks.N)",
        is_root=_is_open_clip_text_tower,
        targets=_OPEN_CLIP_TARGETS),
}


def _known_families() -> str:
    return "; ".join(f"{name}: {fm.description}" for name, fm in TARGET_MAPS.items())


def get_target_map(family: str) -> TargetMap:
    """The entry of ``family`` in ``TARGET_MAPS``; ``KeyError`` listing the known families otherwise."""
    if family not in TARGET_MAPS:
        raise KeyError(f"unknown backbone family {family!r}; known families: {_known_families()}")
    return TARGET_MAPS[family]


def find_roots(model: nn.Module, family: str) -> Dict[str, nn.Module]:
    """``name -> module`` of every tower root of ``family`` in ``model`` (``""`` for ``model`` itself)."""
    is_root = get_target_map(family).is_root
    return {name: m for name, m in model.named_modules() if is_root(m)}


def detect_family(model: nn.Module) -> str:
    """The one family of ``TARGET_MAPS`` with a tower root in ``model``.

    Raises ``ValueError`` when none fits (listing the known families) or when several do (a whole open_clip
    ``CLIP`` holds both an image and a text tower: pass the family explicitly).
    """
    found = [family for family in TARGET_MAPS if find_roots(model, family)]
    if not found:
        raise ValueError(f"{type(model).__name__} belongs to no known backbone family; known families: "
                         f"{_known_families()}")
    if len(found) > 1:
        raise ValueError(f"{type(model).__name__} holds towers of several backbone families {found}: pass family=")
    return found[0]


@dataclass(frozen=True)
class TargetSite:
    """One target found in a model: ``module`` at full name ``name``, in transformer block ``block``."""
    name: str
    module: nn.Module
    target: str
    spec: Target
    block: int


def find_targets(model: nn.Module, family: str, targets: Sequence[str],
                 blocks: Optional[Sequence[int]] = None) -> List[TargetSite]:
    """Every site of ``targets`` (short names of ``family``) in ``model``, in model order.

    Args:
        model: the model to search (any module containing towers of ``family``).
        family: a key of ``TARGET_MAPS``.
        targets: short target names, e.g. ``["q", "v"]``.
        blocks: transformer block indices to keep (``None``: all blocks).
    Returns:
        one :class:`TargetSite` per (module, target); a module reachable under two names (shared towers) once.
    Raises:
        KeyError for an unknown family or target (naming the valid ones); ValueError when a target matches
        nothing or a requested block does not exist.
    """
    fmap = get_target_map(family)
    if not targets:
        raise ValueError(f"no targets given; {family} targets: {list(fmap)}")
    unknown = [t for t in targets if t not in fmap]
    if unknown:
        raise KeyError(f"unknown target(s) {unknown} for backbone family {family!r}; valid: {list(fmap)}")
    roots = find_roots(model, family)
    if not roots:
        raise ValueError(f"{type(model).__name__} has no tower of backbone family {family!r} "
                         f"({fmap.description})")
    patterns = {t: re.compile(fmap[t].module) for t in dict.fromkeys(targets)}
    sites: Dict[tuple, TargetSite] = {}
    for root_name, root in roots.items():
        for rel, module in root.named_modules():
            for t, rx in patterns.items():
                match = rx.fullmatch(rel)
                if match and (id(module), t) not in sites:
                    name = f"{root_name}.{rel}" if root_name else rel
                    sites[(id(module), t)] = TargetSite(name, module, t, fmap[t], int(match.group("block")))
    found = list(sites.values())
    missing = [t for t in patterns if not any(s.target == t for s in found)]
    if missing:
        raise ValueError(f"target(s) {missing} of backbone family {family!r} match no module in "
                         f"{type(model).__name__} (regexes: {[fmap[t].module for t in missing]})")
    if blocks is not None:
        present = sorted({s.block for s in found})
        absent = sorted(set(blocks) - set(present))
        if absent:
            raise ValueError(f"block(s) {absent} do not exist in the {family} tower(s); blocks: {present}")
        found = [s for s in found if s.block in set(blocks)]
    order = {id(m): i for i, m in enumerate(model.modules())}
    return sorted(found, key=lambda s: order[id(s.module)])
