"""Meta-architectures (META_ARCH_REGISTRY)."""
from . import camera_baseline  # noqa: F401
