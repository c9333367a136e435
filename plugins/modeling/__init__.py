"""Model components shared by several methods; importing this package registers them in fast-reid's registries."""
from . import heads  # noqa: F401  (REID_HEADS_REGISTRY)
