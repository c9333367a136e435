"""Tiny MoSAIC batches with valid Market-1501 attribute vectors (imported by the MoSAIC tests)."""
from __future__ import annotations

import torch

from plugins.data.datasets.market_attribute import MARKET_ATTRIBUTES


def market_attributes(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 27) valid Market attribute vectors: binary fields 0/1, age 0-3, exactly one colour per group."""
    g = torch.Generator().manual_seed(seed)
    v = torch.zeros(n, len(MARKET_ATTRIBUTES), dtype=torch.long)
    names = [s.name for s in MARKET_ATTRIBUTES]
    for i, s in enumerate(MARKET_ATTRIBUTES):
        if s.group not in ("upper_colour", "lower_colour"):
            v[:, i] = torch.randint(len(s.values), (n,), generator=g)
    for group in ("upper_colour", "lower_colour"):
        cols = [i for i, s in enumerate(MARKET_ATTRIBUTES) if s.group == group]
        pick = torch.randint(len(cols), (n,), generator=g)
        v[torch.arange(n), torch.tensor(cols)[pick]] = 1
    assert names[9] == "age"
    return v


def tiny_batch(n: int = 8, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return {"images": torch.rand(n, 3, 64, 32) * 255, "targets": torch.arange(n) % 4, "camids": torch.arange(n) % 3,
            "attributes": market_attributes(n, seed)}
