"""Meta-architectures (META_ARCH_REGISTRY)."""
from . import camera_baseline  # noqa: F401
from . import clipreid  # noqa: F401  (CLIPReID: the base of the CLIP-ReID and MoSAIC-ReID methods)
