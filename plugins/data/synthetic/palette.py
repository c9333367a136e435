"""Colour vocabularies: the Market-1501 attribute palettes plus the fine-detail colours of the generator.

Values are sRGB uint8 triples. The names of ``UPPER_COLOURS`` / ``LOWER_COLOURS`` are exactly the suffixes of the
Market-1501 attribute fields (``up<name>`` / ``down<name>``), in the order of the official attribute table.
"""
from __future__ import annotations

from typing import Dict, Tuple

RGB = Tuple[int, int, int]

UPPER_COLOURS: Dict[str, RGB] = {
    "black": (28, 28, 32), "white": (232, 232, 228), "red": (196, 32, 38), "purple": (118, 52, 150),
    "yellow": (232, 198, 40), "gray": (128, 128, 130), "blue": (38, 72, 182), "green": (40, 138, 62),
}
LOWER_COLOURS: Dict[str, RGB] = {
    "black": (28, 28, 32), "white": (232, 232, 228), "pink": (236, 140, 172), "purple": (118, 52, 150),
    "yellow": (232, 198, 40), "gray": (128, 128, 130), "blue": (38, 72, 182), "green": (40, 138, 62),
    "brown": (118, 78, 44),
}
# Relative frequencies (roughly Market-1501's: dark and neutral clothes dominate).
UPPER_PRIOR: Dict[str, float] = {"black": 3, "white": 3, "red": 1.5, "purple": 0.8, "yellow": 1, "gray": 2,
                                 "blue": 1.5, "green": 1}
LOWER_PRIOR: Dict[str, float] = {"black": 4, "white": 1, "pink": 0.6, "purple": 0.6, "yellow": 0.5, "gray": 2,
                                 "blue": 3, "green": 0.6, "brown": 1}

SHOE_COLOURS: Dict[str, RGB] = {"black": (20, 20, 22), "white": (238, 238, 238), "brown": (96, 60, 32),
                                "red": (180, 30, 30), "gray": (110, 110, 112), "blue": (40, 60, 150)}
HAIR_COLOURS: Dict[str, RGB] = {"black": (22, 18, 16), "brown": (80, 50, 28), "blond": (196, 160, 96),
                                "gray": (160, 160, 158)}
SKIN_TONES: Tuple[RGB, ...] = ((241, 204, 176), (224, 172, 138), (198, 140, 102), (160, 108, 76),
                               (112, 74, 52))
ACCESSORY_COLOURS: Dict[str, RGB] = {"black": (30, 30, 34), "brown": (110, 72, 40), "navy": (30, 40, 90),
                                     "red": (170, 36, 40), "beige": (200, 180, 140), "gray": (100, 100, 104)}
