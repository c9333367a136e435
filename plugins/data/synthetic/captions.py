"""Natural-language descriptions of an identity (CUHK-PEDES style): several templates and synonyms.

Every caption names the upper-body colour word, the lower garment and its colour, and a subset of the other
attributes, so text-to-image retrieval is solvable from the attributes plus the fine detail (pattern, shoes).
"""
from __future__ import annotations

import re
from typing import List

import numpy as np

from .identity import Identity

_SUBJECT = {False: ("man", "guy", "male pedestrian", "young man", "person"),
            True: ("woman", "lady", "female pedestrian", "girl", "person")}
_AGE = {1: "child", 2: "teenager", 3: "adult", 4: "elderly person"}
_TOP_LONG = ("long sleeve shirt", "long sleeved top", "jacket", "sweater")
_TOP_SHORT = ("short sleeve shirt", "t-shirt", "short sleeved top", "tee")
_PATTERN = {"plain": ("plain", "solid", ""), "stripes": ("striped", "horizontally striped"),
            "logo": ("logo", "printed"), "two_tone": ("two-tone", "colour-block")}
_WEAR = ("is wearing", "wears", "has on", "is dressed in")
_CARRY = ("is carrying", "carries", "has")


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _lower_phrase(idt: Identity, rng: np.random.Generator) -> str:
    if idt.dress:
        noun = _pick(rng, ("short skirt", "short dress", "mini skirt") if idt.short_lower
                     else ("long skirt", "long dress", "dress"))
    else:
        noun = _pick(rng, ("shorts", "short pants") if idt.short_lower else ("pants", "trousers", "jeans"))
    return f"{idt.lower_colour} {noun}"


def _upper_phrase(idt: Identity, rng: np.random.Generator) -> str:
    noun = _pick(rng, _TOP_SHORT if idt.short_sleeve else _TOP_LONG)
    pat = _pick(rng, _PATTERN[idt.pattern])
    return " ".join(w for w in (idt.upper_colour, pat, noun) if w)


def _extras(idt: Identity, rng: np.random.Generator) -> List[str]:
    items = []
    if idt.backpack:
        items.append(_pick(rng, ("a backpack", "a rucksack", "a bag on the back")))
    if idt.bag:
        items.append(_pick(rng, ("a shoulder bag", "a bag over the shoulder", "a messenger bag")))
    if idt.handbag:
        items.append(_pick(rng, ("a handbag", "a small bag in hand", "a purse")))
    return items


def caption(idt: Identity, rng: np.random.Generator) -> str:
    """One sentence describing ``idt``; the template and synonyms are drawn from ``rng``."""
    subject = _pick(rng, _SUBJECT[idt.female])
    hair = _pick(rng, ("long", "shoulder length") if idt.long_hair else ("short", "cropped"))
    up, low = _upper_phrase(idt, rng), _lower_phrase(idt, rng)
    shoes = f"{idt.shoe_colour} {_pick(rng, ('shoes', 'sneakers', 'boots'))}"
    extras = _extras(idt, rng)
    hat = " and a hat" if idt.hat else ""
    template = int(rng.integers(4))
    if template == 0:
        s = f"A {subject} with {hair} hair {_pick(rng, _WEAR)} a {up}, {low} and {shoes}{hat}."
    elif template == 1:
        s = f"The {subject} {_pick(rng, _WEAR)} {low} and a {up}{hat}. The {subject} has {hair} hair and {shoes}."
    elif template == 2:
        s = f"This {_AGE[idt.age]} has {hair} hair and {_pick(rng, _WEAR)} a {up} with {low}{hat}."
    else:
        s = f"A {subject} in a {up} and {low} is walking, wearing {shoes}{hat}."
    if extras:
        s += f" The {subject} {_pick(rng, _CARRY)} " + " and ".join(extras) + "."
    return s[0].upper() + s[1:]


def tokenize(text: str) -> List[str]:
    """CUHK-PEDES ``processed_tokens``: lower-case word tokens, punctuation dropped."""
    return re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", text.lower())


def captions(idt: Identity, rng: np.random.Generator, n: int = 2) -> List[str]:
    """``n`` captions, distinct where the template space allows."""
    out: List[str] = []
    for _ in range(8 * n):
        c = caption(idt, rng)
        if c not in out:
            out.append(c)
        if len(out) == n:
            break
    while len(out) < n:
        out.append(caption(idt, rng))
    return out
