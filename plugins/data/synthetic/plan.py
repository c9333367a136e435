"""What to render: identities, the train/test id split, and every detection box with its Market-1501 name.

The plan is pure bookkeeping (no pixels), deterministic in (seed, domain, sizes); each box carries its own seed,
so rendering order or parallelism never changes a file.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

import numpy as np

from .domain import PRESETS
from .identity import Identity, sample_identity

GENERATOR_VERSION = "1.0"


@dataclass(frozen=True)
class SynthConfig:
    """Sizes of one generated domain (all of them are recorded in the manifest)."""

    seed: int = 0
    train_ids: int = 48          # identities in bounding_box_train
    test_ids: int = 32           # identities split into query / gallery
    images_per_id: int = 6       # boxes per identity, spread over the cameras
    num_cameras: int = 3         # cameras of each domain (c1..cN)
    height: int = 128
    width: int = 64
    junk: int = 6                # gallery boxes named -1_... (bad crops; ignored by the Market protocol)
    distractors: int = 6         # gallery boxes named 0000_... (background; distractors)

    def validate(self) -> "SynthConfig":
        checks = [(self.train_ids >= 1, "train_ids must be >= 1"), (self.test_ids >= 2, "test_ids must be >= 2"),
                  (self.images_per_id >= 2, "images_per_id must be >= 2 (a query needs a gallery match)"),
                  (1 <= self.num_cameras <= 9, "num_cameras must be 1..9 (one digit in Market file names)"),
                  (self.height >= 32 and self.width >= 16, "image size must be at least 32x16"),
                  (self.junk >= 0 and self.distractors >= 0, "junk / distractors must be >= 0")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"SynthConfig: {msg} (got {self})")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Box:
    """One detection box. ``pid`` is -1 for junk and 0 for distractors (Market-1501 conventions)."""

    pid: int
    cam: int       # 1-based
    seq: int       # Market's s<seq>
    frame: int
    bbox: int      # 0 for query boxes (hand-drawn in Market), 1.. otherwise
    split: str     # train / query / gallery
    kind: str      # person / junk / distractor
    source_pid: int  # identity drawn (junk boxes show a test identity; 0 for distractors)
    seed: Tuple[int, ...]

    @property
    def market_name(self) -> str:
        pid = "-1" if self.pid == -1 else f"{self.pid:04d}"
        return f"{pid}_c{self.cam}s{self.seq}_{self.frame:06d}_{self.bbox:02d}.jpg"


def domain_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def pid_offset(name: str, cfg: SynthConfig) -> int:
    """Identities of different domains never share a pid: presets A, B, C, D take consecutive blocks."""
    presets = list(PRESETS)
    index = presets.index(name) if name in presets else len(presets) + domain_key(name) % 16
    offset = index * (cfg.train_ids + cfg.test_ids)
    if offset + cfg.train_ids + cfg.test_ids > 9999:
        raise ValueError(f"domain '{name}': pids would exceed 9999 (4 digits in Market names); use fewer ids")
    return offset


@dataclass
class DomainPlan:
    name: str
    identities: Dict[int, Identity]
    train_pids: List[int]
    test_pids: List[int]
    boxes: List[Box]


def plan_domain(name: str, cfg: SynthConfig) -> DomainPlan:
    cfg.validate()
    from .domain import make_domain  # local: keeps plan importable without cv2 users caring

    style = make_domain(name, cfg.seed, cfg.num_cameras)
    dk = domain_key(name)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, dk, 0]))
    off = pid_offset(name, cfg)
    pids = list(range(off + 1, off + cfg.train_ids + cfg.test_ids + 1))
    identities = {p: sample_identity(p, np.random.default_rng(np.random.SeedSequence([cfg.seed, dk, 1, p])),
                                     style.colour_bias) for p in pids}
    train_pids, test_pids = pids[:cfg.train_ids], pids[cfg.train_ids:]
    frames = {c: int(rng.integers(100, 2000)) for c in range(1, cfg.num_cameras + 1)}

    def next_frame(cam: int) -> int:
        frames[cam] += int(rng.integers(25, 400))
        return frames[cam]

    boxes: List[Box] = []
    for p in pids:
        start = int(rng.integers(cfg.num_cameras))
        seen_cam = set()
        for k in range(cfg.images_per_id):
            cam = (start + k) % cfg.num_cameras + 1
            if p in train_pids:
                split = "train"
            else:
                split = "query" if cam not in seen_cam else "gallery"
                seen_cam.add(cam)
            boxes.append(Box(p, cam, int(rng.integers(1, 7)), next_frame(cam), 0 if split == "query" else
                             int(rng.integers(1, 4)), split, "person", p, (cfg.seed, dk, 2, p, k)))
    for j in range(cfg.junk):
        cam = int(rng.integers(1, cfg.num_cameras + 1))
        src = test_pids[int(rng.integers(len(test_pids)))]
        boxes.append(Box(-1, cam, int(rng.integers(1, 7)), next_frame(cam), int(rng.integers(1, 4)), "gallery",
                         "junk", src, (cfg.seed, dk, 3, j)))
    for j in range(cfg.distractors):
        cam = int(rng.integers(1, cfg.num_cameras + 1))
        boxes.append(Box(0, cam, int(rng.integers(1, 7)), next_frame(cam), int(rng.integers(1, 4)), "gallery",
                         "distractor", 0, (cfg.seed, dk, 4, j)))
    return DomainPlan(name, identities, train_pids, test_pids, boxes)
