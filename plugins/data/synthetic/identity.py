"""Identities: the Market-1501 attributes of a person plus identity-specific fine detail.

Coarse attributes (what ``market_attribute.mat`` stores) are shared by many identities; the fine detail (exact
shades, clothing pattern, shoe colour, body proportions, skin/hair, NIR reflectance of the dyes) is what makes
two identities with equal attributes still distinguishable, as in real ReID.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Tuple

import numpy as np

from .palette import (ACCESSORY_COLOURS, HAIR_COLOURS, LOWER_COLOURS, LOWER_PRIOR, SHOE_COLOURS, SKIN_TONES,
                      UPPER_COLOURS, UPPER_PRIOR)

AGE_NAMES = ("young", "teenager", "adult", "old")  # Market-1501 age codes 1..4
PATTERNS = ("plain", "stripes", "logo", "two_tone")


@dataclass(frozen=True)
class Identity:
    """One synthetic person. Binary attributes use Python bools; ``age`` is 1..4 like Market-1501."""

    pid: int
    # -- Market-1501 attributes
    female: bool
    long_hair: bool
    short_sleeve: bool          # Market `up`: 1 long sleeve, 2 short sleeve
    short_lower: bool           # Market `down`: 1 long lower-body clothing, 2 short
    dress: bool                 # Market `clothes`: 1 dress, 2 pants
    hat: bool
    backpack: bool
    bag: bool
    handbag: bool
    age: int
    upper_colour: str
    lower_colour: str
    # -- fine detail
    upper_rgb: Tuple[int, int, int]
    lower_rgb: Tuple[int, int, int]
    pattern: str
    pattern_rgb: Tuple[int, int, int]
    stripe_period: float        # in units of person height
    shoe_colour: str
    skin_rgb: Tuple[int, int, int]
    hair_rgb: Tuple[int, int, int]
    hat_rgb: Tuple[int, int, int]
    accessory_rgb: Tuple[int, int, int]
    height: float               # relative body height (0.88..1.0)
    shoulder: float             # shoulder half-width / height
    hip: float                  # hip half-width / height
    torso: float                # hip line position / height
    head: float                 # head radius / height
    nir_upper: float            # near-infrared reflectance of the dyes (independent of the visible colour)
    nir_lower: float

    def market_attributes(self) -> Dict[str, int]:
        """The 27 Market-1501 attribute values (1 = no/first state, 2 = yes/second state; age 1..4)."""
        b = lambda flag: 2 if flag else 1  # noqa: E731
        out = {"gender": b(self.female), "hair": b(self.long_hair), "up": b(self.short_sleeve),
               "down": b(self.short_lower), "clothes": 1 if self.dress else 2, "hat": b(self.hat),
               "backpack": b(self.backpack), "bag": b(self.bag), "handbag": b(self.handbag), "age": self.age}
        for name in UPPER_COLOURS:
            out["up" + name] = b(name == self.upper_colour)
        for name in LOWER_COLOURS:
            out["down" + name] = b(name == self.lower_colour)
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def _choice(rng: np.random.Generator, prior: Dict[str, float], bias: Dict[str, float]) -> str:
    names = list(prior)
    w = np.array([prior[n] * bias.get(n, 1.0) for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def _shade(rng: np.random.Generator, rgb, spread: float = 18.0) -> Tuple[int, int, int]:
    """Identity-specific shade of a named colour (same name, slightly different dye)."""
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + rng.normal(0.0, spread, 3), 0, 255))


def sample_identity(pid: int, rng: np.random.Generator, colour_bias: Dict[str, float] | None = None) -> Identity:
    """Draw one identity; ``colour_bias`` multiplies the clothing-colour prior (domains dress differently)."""
    bias = colour_bias or {}
    female = bool(rng.random() < 0.45)
    age = int(rng.choice(4, p=[0.06, 0.30, 0.56, 0.08])) + 1
    long_hair = bool(rng.random() < (0.75 if female else 0.08))
    dress = bool(female and rng.random() < 0.3)
    short_lower = bool(rng.random() < (0.5 if dress else 0.25))
    short_sleeve = bool(rng.random() < 0.55)
    upper = _choice(rng, UPPER_PRIOR, bias)
    lower = _choice(rng, LOWER_PRIOR, bias)
    pattern = PATTERNS[int(rng.choice(4, p=[0.4, 0.25, 0.2, 0.15]))]
    others = [c for c in UPPER_COLOURS if c != upper]
    pattern_name = others[int(rng.integers(len(others)))]
    hair_name = "gray" if age == 4 else ("black", "brown", "blond")[int(rng.choice(3, p=[0.6, 0.3, 0.1]))]
    acc = list(ACCESSORY_COLOURS.values())
    build = rng.normal(0.0, 1.0)
    return Identity(
        pid=pid, female=female, long_hair=long_hair, short_sleeve=short_sleeve, short_lower=short_lower,
        dress=dress, hat=bool(rng.random() < 0.12), backpack=bool(rng.random() < 0.3),
        bag=bool(rng.random() < 0.22), handbag=bool(rng.random() < 0.15), age=age,
        upper_colour=upper, lower_colour=lower,
        upper_rgb=_shade(rng, UPPER_COLOURS[upper]), lower_rgb=_shade(rng, LOWER_COLOURS[lower]),
        pattern=pattern, pattern_rgb=_shade(rng, UPPER_COLOURS[pattern_name], 10.0),
        stripe_period=float(rng.uniform(0.035, 0.07)),
        shoe_colour=list(SHOE_COLOURS)[int(rng.integers(len(SHOE_COLOURS)))],
        skin_rgb=_shade(rng, SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], 8.0),
        hair_rgb=_shade(rng, HAIR_COLOURS[hair_name], 8.0),
        hat_rgb=_shade(rng, acc[int(rng.integers(len(acc)))], 12.0),
        accessory_rgb=_shade(rng, acc[int(rng.integers(len(acc)))], 12.0),
        height=float(rng.uniform(0.88, 1.0) - (0.05 if age == 1 else 0.0)),
        shoulder=float(np.clip((0.118 if not female else 0.102) + 0.008 * build, 0.085, 0.14)),
        hip=float(np.clip((0.085 if not female else 0.092) + 0.006 * build, 0.07, 0.11)),
        torso=float(rng.uniform(0.46, 0.53)), head=float(rng.uniform(0.058, 0.068)),
        nir_upper=float(rng.uniform(0.15, 0.95)), nir_lower=float(rng.uniform(0.15, 0.95)),
    )
