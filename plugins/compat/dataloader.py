"""Runtime patch: fast-reid's DataLoaderX always creates a CUDA stream and moves batches to the GPU."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from .base import Patch


class HostDataLoader(DataLoader):
    """Drop-in for ``DataLoaderX(local_rank, **kwargs)`` that keeps batches where the model moves them.

    fast-reid's meta-architectures already call ``.to(self.device)`` on their inputs, so no prefetch
    stream is needed on a machine without CUDA. ``pin_memory`` is dropped there (it needs a GPU).
    """

    def __init__(self, local_rank: int, **kwargs):
        kwargs["pin_memory"] = False
        super().__init__(**kwargs)
        self.local_rank = local_rank


def _no_cuda() -> bool:
    return not torch.cuda.is_available()


def _use_host_loader() -> None:
    import fastreid.data.build as build

    build.DataLoaderX = HostDataLoader


PATCHES = [
    Patch("cpu_dataloader", "DataLoaderX raises 'Found no NVIDIA driver' when MODEL.DEVICE is cpu",
          _no_cuda, _use_host_loader, stage="runtime"),
]
