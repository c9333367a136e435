"""Frozen teachers: a module that a student (or a trainable head) reads but never trains.

``FrozenTeacher(module)`` keeps ``module`` OUTSIDE the owner's module tree (as fast-reid's ``Distiller`` keeps its
``model_ts`` in a plain list, and open_clip's distillation task keeps its teacher apart), so it is absent from
``state_dict()`` / checkpoints, ``parameters()`` (no optimizer, no DDP gradient sync, no weight decay) and
``named_modules()``. What a plain list loses is restored here:

- ``.to()`` / ``.cuda()`` / ``.half()`` (every ``nn.Module._apply``) reach the frozen module;
- ``.train()`` never reaches it: it stays in eval mode (dropout off, BatchNorm statistics fixed) forever;
- its parameters have ``requires_grad=False`` and its forward runs under ``torch.no_grad()``.

Loading the frozen weights is the owner's job (from their own files: a CLIP checkpoint, a teacher stage's
``model_final.pth``), never the student's checkpoint.
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

__all__ = ["FrozenTeacher", "frozen", "module_fingerprint"]


class FrozenTeacher(nn.Module):
    """Wraps a module so that it is frozen, in eval mode and out of the owner's state dict (see the module doc)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        module.requires_grad_(False)
        module.eval()
        object.__setattr__(self, "_frozen_module", module)  # not registered: out of state_dict / parameters

    @property
    def module(self) -> nn.Module:
        return self.__dict__["_frozen_module"]

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.module._apply(fn)  # .to() / .cuda() / .float() / .half() reach the frozen module
        return self

    def train(self, mode: bool = True) -> "FrozenTeacher":
        super().train(mode)  # this wrapper's own flag follows the owner ...
        self.module.eval()  # ... the frozen module never leaves eval mode
        return self

    def forward(self, *args, **kwargs) -> Any:
        with torch.no_grad():
            return self.module(*args, **kwargs)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def extra_repr(self) -> str:
        return f"(frozen, not in state_dict): {type(self.module).__name__}, {self.num_parameters():,} parameters"


def frozen(module: nn.Module) -> FrozenTeacher:
    """``FrozenTeacher(module)``."""
    return FrozenTeacher(module)


@torch.no_grad()
def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 (hex, 16 chars) of a module's parameter and buffer names, shapes and float32 bytes: changes when
    any weight changes (used to invalidate caches of a frozen module's outputs)."""
    h = hashlib.sha256()
    for name, t in sorted(list(module.state_dict().items()), key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        if t.is_floating_point():
            t = t.float()
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
