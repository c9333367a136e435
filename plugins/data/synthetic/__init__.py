"""Procedural multi-domain person ReID data (the package's default dataset).

Identities are attribute-defined people (Market-1501 attribute vocabulary + identity-specific fine detail),
rendered by the cameras of several visually distinct domains and written in real dataset formats (Market-1501,
Market-1501-attribute ``.mat``, RGBNT201, CUHK-PEDES). Deterministic in the seed.
"""
from .domain import PRESETS, CameraStyle, DomainStyle, make_domain
from .generate import FORMATS, generate, generate_domain, is_current, read_manifest
from .identity import Identity, sample_identity
from .plan import GENERATOR_VERSION, SynthConfig, plan_domain
from .render import render

__all__ = ["FORMATS", "GENERATOR_VERSION", "PRESETS", "CameraStyle", "DomainStyle", "Identity", "SynthConfig",
           "generate", "generate_domain", "is_current", "make_domain", "plan_domain", "read_manifest", "render",
           "sample_identity"]
