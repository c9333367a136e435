"""CUHK-PEDES layout: ``CUHK-PEDES/reid_raw.json`` + ``CUHK-PEDES/imgs/<file_path>``.

Records: split (train / val / test), captions (2), file_path (relative to ``imgs/``), processed_tokens (one token
list per caption), id (1-based, consecutive over the domain's identities). Train ids -> train; the test ids are
halved into val and test. Junk / distractor boxes carry no description and are not written.
"""
import json
from collections import Counter
from pathlib import Path

import numpy as np

from ..captions import captions, tokenize
from .encode import write_jpeg


class CuhkPedesWriter:
    modalities = ("rgb",)

    def __init__(self, root: Path, plan, style):
        self.root, self.plan, self.quality = Path(root) / "CUHK-PEDES", plan, style.jpeg_quality
        pids = sorted(plan.identities)
        self.ids = {p: i + 1 for i, p in enumerate(pids)}
        half = len(plan.test_pids) // 2
        self.split = {p: "train" for p in plan.train_pids}
        self.split.update({p: "val" for p in plan.test_pids[:half]})
        self.split.update({p: "test" for p in plan.test_pids[half:]})
        self.folder = f"SYNTH{plan.name}"
        self.records, self.counts = [], Counter()

    def add(self, box, images) -> None:
        if box.kind != "person":
            return
        rel = f"{self.folder}/{box.market_name}"
        write_jpeg(self.root / "imgs" / rel, images["rgb"], self.quality)
        rng = np.random.default_rng(np.random.SeedSequence(list(box.seed) + [7]))
        caps = captions(self.plan.identities[box.pid], rng, 2)
        self.records.append({"split": self.split[box.pid], "captions": caps, "file_path": rel,
                             "processed_tokens": [tokenize(c) for c in caps], "id": self.ids[box.pid]})
        self.counts[self.split[box.pid]] += 1

    def close(self) -> dict:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "reid_raw.json").write_text(json.dumps(self.records))
        return {"format": "cuhk_pedes", "path": "CUHK-PEDES", "images": len(self.records),
                "detail": ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))}
