"""Config translation of MoSAIC (one place): the expert schema of a config's training dataset and policy."""
from __future__ import annotations

from fastreid.data.datasets import DATASET_REGISTRY

from .schema import ExpertPolicy, ExpertSchema, build_schema

__all__ = ["policy_from_cfg", "attribute_specs_of", "schema_from_cfg"]


def policy_from_cfg(cfg) -> ExpertPolicy:
    p = cfg.MOSAIC.POLICY
    return ExpertPolicy(multi_hot=str(p.MULTI_HOT), no_value=str(p.NO_VALUE), missing=str(p.MISSING))


def attribute_specs_of(dataset_name: str):
    """The ``attribute_specs`` of a registered attribute reader (Market1501Attribute, DukeMTMCAttribute, ...)."""
    reader = DATASET_REGISTRY.get(dataset_name)
    specs = getattr(reader, "attribute_specs", None)
    if not specs:
        raise ValueError(f"MoSAIC needs an attribute dataset: DATASETS.NAMES[0] '{dataset_name}' has no "
                         f"attribute_specs (use Market1501Attribute, DukeMTMCAttribute or SynthReIDAttrA)")
    return specs


def schema_from_cfg(cfg) -> ExpertSchema:
    """The schema of ``DATASETS.NAMES[0]``'s attributes; every training / test dataset must share its layout."""
    names = list(cfg.DATASETS.NAMES) + list(cfg.DATASETS.TESTS)
    specs = attribute_specs_of(names[0])
    for other in names[1:]:
        if tuple(s.name for s in attribute_specs_of(other)) != tuple(s.name for s in specs):
            raise ValueError(f"dataset '{other}' has other attribute fields than '{names[0]}': one model routes "
                             f"one attribute layout")
    return build_schema(specs, policy_from_cfg(cfg))
