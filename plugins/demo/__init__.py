"""DeMo (Wang et al., AAAI 2025): decoupled multi-modal (RGB / NIR / TIR) features and an attention-triggered
mixture of experts. Importing this package registers ``DeMo`` (META_ARCH_REGISTRY), ``DeMoTrainer`` and
``DeMoLadder`` (TRAINER_REGISTRY)."""
from . import meta_arch  # noqa: F401  (DeMo)
from . import ladder, trainer  # noqa: F401  (DeMoLadder, DeMoTrainer)
from .config import add_demo_config

__all__ = ["add_demo_config"]
