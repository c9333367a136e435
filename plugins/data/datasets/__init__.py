"""Dataset readers; importing this package registers them in fast-reid's DATASET_REGISTRY."""
from . import market_attribute  # noqa: F401  (Market1501Attribute)
from . import duke_attribute  # noqa: F401  (DukeMTMCAttribute)
from . import synthetic  # noqa: F401  (SynthReIDA .. SynthReIDD)
from . import rgbnt201  # noqa: F401  (RGBNT201)
from . import rgbnt100  # noqa: F401  (RGBNT100)
from . import msvr310  # noqa: F401  (MSVR310)
