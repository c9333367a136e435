"""Trainers and hooks shared by several methods."""
from . import trainers  # noqa: F401  (registers trainers)
from . import pseudo_label_trainer  # noqa: F401  (registers PseudoLabelTrainer)
from . import clipreid_trainers  # noqa: F401  (CLIPReIDPromptTrainer, CLIPReIDTrainer: CLIP-ReID and MoSAIC-ReID)
