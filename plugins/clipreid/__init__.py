"""CLIP-ReID (Li et al., AAAI 2023): identity prompt learning on a frozen CLIP, then image-encoder fine-tuning with
the learned prompts' text features. The model (``CLIPReID``, META_ARCH_REGISTRY) and its two stage trainers are
shared with MoSAIC-ReID, which builds on it, and live in the shared folders (``plugins/modeling/meta_arch/clipreid.py``,
``plugins/engine/clipreid_trainers.py``, ``plugins/engine/clipreid_pipeline.py``). Importing this package registers
``CLIPReIDPipeline`` (TRAINER_REGISTRY): both stages plus the method's ablation rows."""
from . import pipeline  # noqa: F401  (CLIPReIDPipeline)
from .config import add_clipreid_config

__all__ = ["add_clipreid_config"]
