"""RGBNT201 layout: ``RGBNT201/{train_171,test}/{RGB,NI,TI}/<pid:06d>_cam<X>_<k>_<frame>.jpg``.

The three modalities of one box share the file name. ``test`` holds query and gallery together (the reader
removes same-pid same-camera matches), so junk / distractor boxes are not written here.
"""
from collections import Counter
from pathlib import Path

from .encode import write_jpeg

MODS = {"rgb": "RGB", "ni": "NI", "ti": "TI"}


class Rgbnt201Writer:
    modalities = ("rgb", "ni", "ti")

    def __init__(self, root: Path, plan, style):
        if len(style.cameras) > 4:
            raise ValueError(f"RGBNT201 names hold cameras cam1..cam4; domain '{plan.name}' has {len(style.cameras)}")
        self.root, self.counts = Path(root) / "RGBNT201", Counter()
        self.quality = style.jpeg_quality

    def add(self, box, images) -> None:
        if box.kind != "person":
            return
        split = "train_171" if box.split == "train" else "test"
        name = f"{box.pid:06d}_cam{box.cam}_{box.seq:04d}_{box.frame:06d}.jpg"
        for key, folder in MODS.items():
            write_jpeg(self.root / split / folder / name, images[key], self.quality)
        self.counts[split] += 1

    def close(self) -> dict:
        return {"format": "rgbnt201", "path": "RGBNT201", "images": 3 * sum(self.counts.values()),
                "detail": ", ".join(f"{k} {v}x3" for k, v in sorted(self.counts.items()))}
