"""The check every method trainer makes on the model its config builds."""
from __future__ import annotations

from torch import nn

__all__ = ["require_meta_arch"]


def require_meta_arch(model: nn.Module, expected: type, trainer: str) -> nn.Module:
    """``model`` itself when it is an ``expected`` (the trainer's meta-architecture); otherwise a TypeError naming
    the trainer, the MODEL.META_ARCHITECTURE it trains and what the config built instead."""
    if not isinstance(model, expected):
        raise TypeError(f"{trainer} trains MODEL.META_ARCHITECTURE {expected.__name__}, got {type(model).__name__}")
    return model
