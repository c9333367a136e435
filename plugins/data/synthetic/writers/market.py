"""Market-1501 layout: ``{bounding_box_train,query,bounding_box_test}/PPPP_cCsS_FFFFFF_BB.jpg``.

Names follow Market-1501 exactly (``-1_`` junk and ``0000_`` distractors included), so fast-reid's
``([-\\d]+)_c(\\d)`` pattern parses pid and camera.
"""
from collections import Counter
from pathlib import Path

from .encode import write_jpeg

SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


class MarketWriter:
    modalities = ("rgb",)

    def __init__(self, root: Path, plan, style):
        self.root, self.quality = Path(root), style.jpeg_quality
        self.counts = Counter()

    def add(self, box, images) -> None:
        write_jpeg(self.root / SPLIT_DIRS[box.split] / box.market_name, images["rgb"], self.quality)
        self.counts[SPLIT_DIRS[box.split]] += 1

    def close(self) -> dict:
        for d in SPLIT_DIRS.values():
            (self.root / d).mkdir(parents=True, exist_ok=True)
        return {"format": "market", "path": ".", "images": sum(self.counts.values()),
                "detail": ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))}
