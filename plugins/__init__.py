"""fast-reid plugins: mixture-of-experts and parameter-efficient expert methods for ReID.

``import plugins`` makes fast-reid importable on today's Python/torch/numpy (feature-tested patches, see
``plugins.compat``) and registers every plugin component in fast-reid's registries.
"""
from .compat import apply_import_patches, apply_runtime_patches

apply_import_patches()
apply_runtime_patches()

# Registration is explicit: each import below registers the components of one package.
from . import data  # noqa: E402,F401  (dataset readers -> DATASET_REGISTRY)
from . import engine  # noqa: E402,F401  (trainers -> TRAINER_REGISTRY)
from . import modeling  # noqa: E402,F401  (backbones, heads, meta-architectures, losses)
from . import routers  # noqa: E402,F401  (ROUTER_REGISTRY)
from . import layers  # noqa: E402,F401  (ADAPTER_REGISTRY)
from .config import add_plugins_config  # noqa: E402

__version__ = "0.1.0"
__all__ = ["add_plugins_config", "apply_runtime_patches"]
