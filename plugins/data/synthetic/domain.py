"""Domains (a style + its own cameras) and cameras (viewpoint / lighting jitter inside a domain).

A domain is what changes between ReID datasets: scene backgrounds, illumination, colour cast, optics (blur),
sensor noise, detector scale/crop habits, occlusion rate, and even what people wear. The four named presets
are deliberately far apart so a model trained on one loses accuracy on another (real domain shift); any other
name gets a style drawn from a generator seeded by the name, so new domains are reproducible too.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Dict, Tuple

import numpy as np

BACKGROUNDS = ("street", "indoor", "park", "night")


@dataclass(frozen=True)
class CameraStyle:
    """Per-camera deviations from the domain style."""

    index: int                              # 1-based camera number written in the file name (c<index>)
    view_probs: Tuple[float, float, float]  # P(front), P(back), P(side)
    gain: float                             # brightness multiplier
    cast: Tuple[float, float, float]        # extra RGB multipliers
    light_dir: float                        # left/right illumination gradient, -1..1
    scale: float                            # multiplier of the person height fraction
    bg_shift: float                         # hue-like shift of this camera's background colours


@dataclass(frozen=True)
class DomainStyle:
    """The look of one domain; ranges are (low, high) sampled per image."""

    name: str
    background: str                          # one of BACKGROUNDS
    bg_colours: Tuple[Tuple[int, int, int], ...]
    gain: float
    gamma: float
    cast: Tuple[float, float, float]
    saturation: float
    contrast: float
    blur: Tuple[float, float]                # Gaussian sigma in output pixels
    noise: float                             # sensor noise std (0..255 scale)
    scale: Tuple[float, float]               # person height / image height
    shift: float                             # max horizontal offset / image width
    cut_prob: float                          # probability the detector box cuts the feet / head
    occlusion: float                         # probability of a partial occluder
    jpeg_quality: int
    colour_bias: Dict[str, float] = field(default_factory=dict)
    cameras: Tuple[CameraStyle, ...] = ()


PRESETS: Dict[str, DomainStyle] = {
    # Sunny street, sharp, neutral colours, tight detector boxes.
    "A": DomainStyle("A", "street", ((150, 150, 150), (190, 180, 165), (120, 130, 140)), gain=1.08, gamma=1.0,
                     cast=(1.0, 1.0, 1.0), saturation=1.05, contrast=1.05, blur=(0.0, 0.5), noise=3.0,
                     scale=(0.86, 0.96), shift=0.05, cut_prob=0.05, occlusion=0.05, jpeg_quality=92),
    # Indoor mall: warm tungsten cast, low contrast, tiled floors, some blur, people a bit smaller.
    "B": DomainStyle("B", "indoor", ((200, 170, 130), (170, 140, 110), (220, 200, 170)), gain=0.92, gamma=1.15,
                     cast=(1.18, 1.0, 0.72), saturation=0.85, contrast=0.8, blur=(0.6, 1.2), noise=5.0,
                     scale=(0.74, 0.88), shift=0.1, cut_prob=0.08, occlusion=0.15, jpeg_quality=85,
                     colour_bias={"white": 1.5, "pink": 2.0, "brown": 1.5}),
    # Overcast park: cold bluish cast, desaturated, low resolution (strong blur), crops cut the body often.
    "C": DomainStyle("C", "park", ((70, 110, 60), (110, 140, 90), (150, 160, 150)), gain=0.95, gamma=0.9,
                     cast=(0.82, 0.98, 1.22), saturation=0.6, contrast=0.9, blur=(1.2, 2.0), noise=4.0,
                     scale=(0.9, 1.08), shift=0.12, cut_prob=0.3, occlusion=0.25, jpeg_quality=75,
                     colour_bias={"green": 2.0, "gray": 1.5, "black": 1.3}),
    # Night CCTV: dark, greenish, heavy noise, high gamma, loose boxes.
    "D": DomainStyle("D", "night", ((30, 34, 40), (50, 48, 44), (20, 26, 30)), gain=0.55, gamma=1.4,
                     cast=(0.85, 1.15, 0.85), saturation=0.45, contrast=1.2, blur=(0.5, 1.0), noise=12.0,
                     scale=(0.7, 0.86), shift=0.12, cut_prob=0.1, occlusion=0.2, jpeg_quality=80,
                     colour_bias={"black": 1.6, "blue": 1.3}),
}


def _name_seed(name: str, seed: int) -> np.random.SeedSequence:
    digest = hashlib.sha256(f"{name}|{seed}".encode()).digest()
    return np.random.SeedSequence([int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)])


def _random_style(name: str, rng: np.random.Generator) -> DomainStyle:
    """A style for a domain name outside the presets, drawn from broad ranges."""
    bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    cols = tuple(tuple(int(v) for v in rng.integers(20, 230, 3)) for _ in range(3))
    lo_blur = float(rng.uniform(0.0, 1.5))
    lo_scale = float(rng.uniform(0.7, 0.92))
    return DomainStyle(name, bg, cols, gain=float(rng.uniform(0.6, 1.1)), gamma=float(rng.uniform(0.85, 1.4)),
                       cast=tuple(float(v) for v in rng.uniform(0.8, 1.2, 3)),
                       saturation=float(rng.uniform(0.5, 1.1)), contrast=float(rng.uniform(0.8, 1.2)),
                       blur=(lo_blur, lo_blur + 0.6), noise=float(rng.uniform(2, 10)),
                       scale=(lo_scale, lo_scale + 0.12), shift=0.1, cut_prob=float(rng.uniform(0, 0.25)),
                       occlusion=float(rng.uniform(0, 0.25)), jpeg_quality=int(rng.integers(75, 95)))


def make_domain(name: str, seed: int, num_cameras: int) -> DomainStyle:
    """The style of domain ``name`` with ``num_cameras`` cameras; deterministic in (name, seed, num_cameras)."""
    if not 1 <= num_cameras <= 9:
        raise ValueError(f"num_cameras={num_cameras}: Market-1501 file names hold a single camera digit (1-9)")
    rng = np.random.default_rng(_name_seed(name, seed))
    style = PRESETS.get(name) or _random_style(name, rng)
    cams = []
    for c in range(num_cameras):
        # Each camera has a dominant viewpoint (front / back / side) plus the others less often.
        probs = np.full(3, 0.15) + 0.55 * np.eye(3)[c % 3]
        probs = rng.dirichlet(probs * 20)
        cams.append(CameraStyle(
            index=c + 1, view_probs=tuple(float(p) for p in probs), gain=float(rng.uniform(0.85, 1.15)),
            cast=tuple(float(v) for v in rng.uniform(0.92, 1.08, 3)), light_dir=float(rng.uniform(-1, 1)),
            scale=float(rng.uniform(0.95, 1.04)), bg_shift=float(rng.uniform(-1, 1))))
    return replace(style, cameras=tuple(cams))
