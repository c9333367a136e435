"""The expert schema: a dataset's attribute fields -> MoSAIC's study attributes, their experts, and which experts an
attribute vector activates (the oracle router's rule).

A *study attribute* is one semantic group of the paper (Table 1): a binary field (gender, hat ...), a multiclass
field (age) or a colour group made of one binary field per colour (``upblack`` ... -> ``upper_colour``). Experts per
study attribute, by kind (``attribute_base``):

- single-state binary: 1 expert, active when the value is 1 (present);
- dual-state binary: 2 experts, the observed state's;
- multiclass field: one per value, the observed one;
- colour group: one per colour field; which are active follows ``ExpertPolicy``.

With the default policy (colours multi-hot -> every marked colour active, no colour marked -> group inactive,
missing value -> group inactive) Market-1501-attribute gives 35 experts and DukeMTMC-attribute 26, the paper's
counts. ``no_value="expert"`` adds one "no colour" expert per colour group (37 / 28).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from ..data.batch import MISSING_ATTRIBUTE
from ..data.datasets.attribute_base import DUAL_STATE, MULTICLASS, SINGLE_STATE, AttributeSpec

__all__ = ["SUPERCATEGORIES", "GROUPS", "MULTI_HOT", "NO_VALUE", "MISSING", "ExpertPolicy", "StudyAttribute",
           "ExpertSchema", "build_schema"]

# Paper Table 1: the supercategory of each study attribute (reader group names).
SUPERCATEGORIES: Dict[str, str] = {
    "gender": "intrinsic", "hair": "intrinsic", "age": "intrinsic",
    "hat": "accessories", "backpack": "accessories", "bag": "accessories", "handbag": "accessories",
    "up": "upper", "top": "upper", "upper_colour": "upper",
    "down": "lower", "clothes": "lower", "boots": "lower", "shoes": "lower", "lower_colour": "lower",
}
# The study's attribute groups (Sec. 4.1): the four supercategories and "extrinsic" = upper + lower + accessories.
GROUPS: Dict[str, Tuple[str, ...]] = {
    "intrinsic": ("intrinsic",), "upper": ("upper",), "lower": ("lower",), "accessories": ("accessories",),
    "extrinsic": ("upper", "lower", "accessories"),
}

MULTI_HOT = ("all", "first", "none")  # a colour group with several colours marked: all active / first / none
NO_VALUE = ("none", "expert")  # a colour group with no colour marked: inactive / its own "no colour" expert
MISSING = ("skip", "error")  # a field not annotated (-1): its group is inactive / raise


@dataclass(frozen=True)
class ExpertPolicy:
    """How ambiguous annotations map to experts (config ``MOSAIC.POLICY.*``)."""

    multi_hot: str = "all"
    no_value: str = "none"
    missing: str = "skip"

    def __post_init__(self):
        for key, value, allowed in (("MULTI_HOT", self.multi_hot, MULTI_HOT), ("NO_VALUE", self.no_value, NO_VALUE),
                                    ("MISSING", self.missing, MISSING)):
            if value not in allowed:
                raise ValueError(f"MOSAIC.POLICY.{key} must be one of {allowed}, got {value!r}")


@dataclass(frozen=True)
class StudyAttribute:
    """One study attribute. ``columns``: indices into the attribute vector; ``experts``: expert names;
    ``offset``: index of its first expert in the schema; ``exclusive``: exactly one expert is active whenever the
    attribute is annotated (dual-state, multiclass field, colours with "first" + a "no colour" expert)."""

    name: str
    kind: str
    supercategory: str
    columns: Tuple[int, ...]
    experts: Tuple[str, ...]
    offset: int
    exclusive: bool

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def expert_slice(self) -> slice:
        return slice(self.offset, self.offset + self.num_experts)


class ExpertSchema:
    """The study attributes of one attribute vector layout and the oracle rule ``active(attributes)``."""

    def __init__(self, attributes: Sequence[StudyAttribute], num_fields: int, policy: ExpertPolicy):
        self.attributes: Tuple[StudyAttribute, ...] = tuple(attributes)
        self.num_fields = int(num_fields)
        self.policy = policy
        self.num_experts = sum(a.num_experts for a in self.attributes)
        self._by_name = {a.name: a for a in self.attributes}

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(a.name for a in self.attributes)

    @property
    def expert_names(self) -> Tuple[str, ...]:
        return tuple(f"{a.name}={e}" for a in self.attributes for e in a.experts)

    def __getitem__(self, name: str) -> StudyAttribute:
        if name not in self._by_name:
            raise KeyError(f"unknown study attribute {name!r}; this schema has {list(self.names)}")
        return self._by_name[name]

    def counts(self) -> Dict[str, int]:
        """Experts per study attribute."""
        return {a.name: a.num_experts for a in self.attributes}

    def summary(self) -> str:
        rows = [f"  {a.name:<13} {a.kind:<12} {a.supercategory:<11} {a.num_experts:>2}  {', '.join(a.experts)}"
                for a in self.attributes]
        return "\n".join([f"{len(self.attributes)} study attributes, {self.num_experts} experts (policy {self.policy}):"]
                         + rows)

    def resolve(self, names: Optional[Iterable[str]]) -> Tuple[str, ...]:
        """Study attributes of an inclusion list (schema order); ``None``: all, empty: none. Unknown names fail."""
        if names is None:
            return self.names
        wanted = set(names)
        unknown = sorted(wanted - set(self.names))
        if unknown:
            raise KeyError(f"unknown study attributes {unknown} (MOSAIC.INCLUDE / a sweep configuration); this "
                           f"dataset's are {list(self.names)}")
        return tuple(n for n in self.names if n in wanted)

    def expert_mask(self, names: Optional[Iterable[str]]) -> torch.Tensor:
        """(E,) bool: the experts of the study attributes ``names`` (``None``: all; empty: none)."""
        mask = torch.zeros(self.num_experts, dtype=torch.bool)
        for n in self.resolve(names):
            mask[self[n].expert_slice] = True
        return mask

    def known(self, attributes: torch.Tensor) -> torch.Tensor:
        """(B, len(attributes)) bool: the study attribute is annotated (none of its fields is missing)."""
        attributes = self._check(attributes)
        return torch.stack([(attributes[:, list(a.columns)] != MISSING_ATTRIBUTE).all(1) for a in self.attributes], 1)

    def active(self, attributes: torch.Tensor) -> torch.Tensor:
        """The oracle rule: attribute vectors (B, A) int64 (-1 = missing) -> active experts (B, E) bool."""
        attributes = self._check(attributes)
        parts: List[torch.Tensor] = []
        for a in self.attributes:
            values = attributes[:, list(a.columns)]  # (B, c)
            missing = (values == MISSING_ATTRIBUTE).any(1, keepdim=True)
            if self.policy.missing == "error" and bool(missing.any()):
                row = int(missing.squeeze(1).nonzero()[0])
                raise ValueError(f"attribute '{a.name}' is not annotated for sample {row} and "
                                 f"MOSAIC.POLICY.MISSING is 'error'")
            if a.kind == SINGLE_STATE:
                on = values == 1
            elif len(a.columns) == 1:  # dual-state or multiclass field: one-hot of the value
                on = values == torch.arange(a.num_experts, device=values.device).view(1, -1)
            else:  # colour group: one binary field per colour
                marked = values == 1
                count = marked.sum(1, keepdim=True)
                if self.policy.multi_hot == "first":
                    on = marked & (marked.long().cumsum(1) == 1)
                elif self.policy.multi_hot == "none":
                    on = marked & (count == 1)
                else:
                    on = marked
                if self.policy.no_value == "expert":
                    on = torch.cat([on, count == 0], 1)
            parts.append(on & ~missing)
        return torch.cat(parts, 1) if parts else attributes.new_zeros(attributes.shape[0], 0, dtype=torch.bool)

    def _check(self, attributes: torch.Tensor) -> torch.Tensor:
        if attributes.dim() != 2 or attributes.shape[1] != self.num_fields:
            raise ValueError(f"attribute vectors must be (B, {self.num_fields}), got {tuple(attributes.shape)} "
                             f"(batch['attributes'] of another dataset? set PLUGINS.DATA.ATTRIBUTES True)")
        return attributes.long()


def build_schema(specs: Sequence[AttributeSpec], policy: ExpertPolicy = ExpertPolicy()) -> ExpertSchema:
    """Group the reader's fields (``attribute_specs`` order) into study attributes (first-appearance order)."""
    order: List[str] = []
    members: Dict[str, List[int]] = {}
    for i, spec in enumerate(specs):
        if spec.group not in members:
            order.append(spec.group)
            members[spec.group] = []
        members[spec.group].append(i)
    attributes, offset = [], 0
    for group in order:
        cols = members[group]
        kinds = {specs[i].kind for i in cols}
        if len(kinds) != 1:
            raise ValueError(f"attribute group '{group}' mixes kinds {sorted(kinds)}")
        kind = kinds.pop()
        if group not in SUPERCATEGORIES:
            raise KeyError(f"attribute group '{group}' has no supercategory; add it to "
                           f"plugins.mosaic.schema.SUPERCATEGORIES (known: {sorted(SUPERCATEGORIES)})")
        if len(cols) > 1:  # one binary field per value (colours)
            if kind != MULTICLASS or any(len(specs[i].values) != 2 for i in cols):
                raise ValueError(f"attribute group '{group}' has {len(cols)} fields: only multiclass groups of "
                                 f"binary fields (colours) may")
            prefix = os.path.commonprefix([specs[i].name for i in cols])
            experts = tuple(specs[i].name[len(prefix):] or specs[i].name for i in cols)
            if policy.no_value == "expert":
                experts += ("no_value",)
            exclusive = policy.multi_hot == "first" and policy.no_value == "expert"
        elif kind == SINGLE_STATE:
            experts, exclusive = (specs[cols[0]].values[1],), False
        elif kind in (DUAL_STATE, MULTICLASS):
            experts, exclusive = tuple(specs[cols[0]].values), True
        else:
            raise ValueError(f"attribute '{specs[cols[0]].name}' has unknown kind {kind!r}")
        attributes.append(StudyAttribute(group, kind, SUPERCATEGORIES[group], tuple(cols), experts, offset, exclusive))
        offset += len(experts)
    return ExpertSchema(attributes, len(specs), policy)
