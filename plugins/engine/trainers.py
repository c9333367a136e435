"""Trainers registered in TRAINER_REGISTRY. ``DefaultTrainer`` is fast-reid's own, unchanged."""
from fastreid.engine import DefaultTrainer

from ..registry import TRAINER_REGISTRY

TRAINER_REGISTRY.register(DefaultTrainer)
