"""CLIP-ReID (Li et al., AAAI 2023): identity prompt learning on a frozen CLIP, then image-encoder fine-tuning with
the learned prompts' text features. Importing this package registers ``CLIPReID`` (META_ARCH_REGISTRY) and the
trainers ``CLIPReIDPromptTrainer``, ``CLIPReIDTrainer`` and ``CLIPReIDPipeline`` (TRAINER_REGISTRY)."""
from . import meta_arch  # noqa: F401  (CLIPReID)
from . import trainers  # noqa: F401  (CLIPReIDPromptTrainer, CLIPReIDTrainer)
from . import pipeline  # noqa: F401  (CLIPReIDPipeline)
from .config import add_clipreid_config

__all__ = ["add_clipreid_config"]
