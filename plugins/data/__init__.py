"""Data: dataset readers (registered in fast-reid DATASET_REGISTRY) and the procedural generator."""
from . import datasets  # noqa: F401
