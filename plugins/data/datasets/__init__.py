"""Dataset readers; importing this package registers them in fast-reid's DATASET_REGISTRY."""
from . import market_attribute  # noqa: F401  (Market1501Attribute)
from . import duke_attribute  # noqa: F401  (DukeMTMCAttribute)
