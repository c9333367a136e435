"""DM-Adapter (Liu et al., AAAI 2025): text-to-image person retrieval with a domain-aware sparse mixture of
adapters in both frozen CLIP towers. Importing this package registers ``DMAdapter`` (META_ARCH_REGISTRY),
``DomainAwareRouter`` (ROUTER_REGISTRY) and ``DMAdapterTrainer`` (TRAINER_REGISTRY)."""
from . import domain_router  # noqa: F401  (DomainAwareRouter)
from . import meta_arch  # noqa: F401  (DMAdapter)
from . import trainer  # noqa: F401  (DMAdapterTrainer)
from .config import add_dmadapter_config

__all__ = ["add_dmadapter_config"]
