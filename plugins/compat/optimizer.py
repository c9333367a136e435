"""Runtime patch: fast-reid's contiguous parameter buffer silently stops all learning on torch >= 2.0.

``build_optimizer(contiguous=True)`` (the default) makes every parameter a view of one flat buffer and hands
the optimizer only that buffer, whose ``.grad`` aliases the parameters' grads. torch 2.x's
``Optimizer.zero_grad()`` defaults to ``set_to_none=True``: it drops the buffer's grad, ``backward()`` then
allocates fresh per-parameter grads, the buffer has no grad and ``optimizer.step()`` updates nothing. Training
runs, logs flat losses and returns the initial model. We build the optimizer over the ordinary parameter
groups instead (the buffer was only a speed optimisation).
"""
from __future__ import annotations

import inspect

import torch

from .base import Patch


def _zero_grad_drops_grads() -> bool:
    default = inspect.signature(torch.optim.Optimizer.zero_grad).parameters["set_to_none"].default
    return default is True


def _plain_param_groups() -> None:
    import fastreid.engine.defaults as defaults
    from fastreid.solver import build_optimizer as fastreid_build_optimizer

    def build_optimizer(cfg, model, contiguous=True):
        return fastreid_build_optimizer(cfg, model, contiguous=False)

    build_optimizer.__doc__ = fastreid_build_optimizer.__doc__
    defaults.build_optimizer = build_optimizer


PATCHES = [
    Patch("plain_optimizer_params",
          "ContiguousParams + zero_grad(set_to_none=True) (torch >= 2.0): the optimizer never steps, losses stay flat",
          _zero_grad_drops_grads, _plain_param_groups, stage="runtime"),
]
