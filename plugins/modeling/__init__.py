"""Model components shared by several methods; importing this package registers them in fast-reid's registries."""
from . import heads  # noqa: F401  (REID_HEADS_REGISTRY)
from . import backbones  # noqa: F401  (BACKBONE_REGISTRY)
from . import meta_arch  # noqa: F401  (META_ARCH_REGISTRY)
from . import losses  # noqa: F401  (LOSS_REGISTRY)
