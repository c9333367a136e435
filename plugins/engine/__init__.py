"""Trainers and hooks shared by several methods."""
from . import trainers  # noqa: F401  (registers trainers)
from . import pseudo_label_trainer  # noqa: F401  (registers PseudoLabelTrainer)
