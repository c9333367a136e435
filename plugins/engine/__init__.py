"""Trainers and hooks shared by several methods."""
from . import trainers  # noqa: F401  (registers trainers)
