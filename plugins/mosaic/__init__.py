"""MoSAIC-ReID: attribute-specific LoRA experts with an oracle router on CLIP-ReID, and the attribute-importance
study. Importing this package registers ``MoSAIC`` (META_ARCH_REGISTRY), the routers ``OracleAttributeRouter`` and
``PredictedAttributeRouter`` (ROUTER_REGISTRY) and the MoSAIC trainers (TRAINER_REGISTRY)."""
from . import meta_arch  # noqa: F401  (MoSAIC)
from . import routers  # noqa: F401  (OracleAttributeRouter, PredictedAttributeRouter)
from . import trainers  # noqa: F401  (MoSAICTrainer)
from . import pipeline  # noqa: F401  (MoSAICPipeline)
from .config import add_mosaic_config

__all__ = ["add_mosaic_config"]
