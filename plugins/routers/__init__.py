"""Routers / gates (ROUTER_REGISTRY): inputs -> expert weights (B, ..., K) [+ auxiliary loss]."""
from .base import Router, RouterOutput
from . import top_k  # noqa: F401,E402  (SoftmaxTopKRouter)

__all__ = ["Router", "RouterOutput"]
