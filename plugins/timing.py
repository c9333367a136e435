"""Wall-clock timing for the benchmarks in ``tools/``: one home for the warm-up + CUDA-synchronised loop."""
from __future__ import annotations

import time
from typing import Callable

import torch

__all__ = ["synchronize", "seconds_per_call"]


def synchronize(device: str) -> None:
    """Wait for queued CUDA work (asynchronous kernels would otherwise not be timed); a no-op elsewhere."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def seconds_per_call(fn: Callable[[], object], iters: int, device: str) -> float:
    """Mean seconds of ``fn()`` over ``iters`` calls, after one untimed warm-up call."""
    fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / iters
