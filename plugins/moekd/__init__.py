"""MoE-KD (Shoko & van Zyl, SACAIR 2025): a gated top-1 mixture of two frozen foundation models (CLIP, ALIGN)
as the teacher, distilled into a ResNet-18 student. Importing this package registers ``MoEKDTeacher`` and
``MoEKDStudent`` (META_ARCH_REGISTRY), ``TopOneGate`` (ROUTER_REGISTRY), ``MoEKDTrainer`` and ``MoEKDPipeline``
(TRAINER_REGISTRY). See README.md."""
from . import gate  # noqa: F401  (TopOneGate)
from . import meta_arch  # noqa: F401  (MoEKDTeacher, MoEKDStudent)
from . import trainers  # noqa: F401  (MoEKDTrainer)
from . import pipeline  # noqa: F401  (MoEKDPipeline)
from .config import add_moekd_config

__all__ = ["add_moekd_config"]
