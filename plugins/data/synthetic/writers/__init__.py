"""On-disk formats of real ReID datasets; each writer receives every rendered box once.

Writer contract: ``modalities`` (which images it needs), ``add(box, images)`` per box, ``close() -> dict`` with
what it wrote (counts for the summary table).
"""
from .cuhk_pedes import CuhkPedesWriter
from .market import MarketWriter
from .market_attribute import MarketAttributeWriter
from .rgbnt201 import Rgbnt201Writer

WRITERS = {"market": MarketWriter, "market_attribute": MarketAttributeWriter, "rgbnt201": Rgbnt201Writer,
           "cuhk_pedes": CuhkPedesWriter}
__all__ = ["WRITERS", "CuhkPedesWriter", "MarketWriter", "MarketAttributeWriter", "Rgbnt201Writer"]
