"""Element-wise merges of K expert deltas for one layer: LoRA-Avg, Task Arithmetic, TIES, DARE.

Every function takes the K experts' task deltas of one layer (``deltas[k]``: any shape, typically the
``(d_out, d_in)`` matrix ``s * B_k @ A_k`` of a LoRA expert) and returns the merged delta of the same shape.
The arithmetic is peft's (``peft.utils.merge_utils``): these wrappers add typed keyword arguments, input
checks, the global scale ``lambda`` of the papers and a seeded generator for DARE (peft draws its DARE
masks from the global torch RNG, which is not reproducible per call).

References: Task Arithmetic (Ilharco et al., ICLR 2023), TIES-Merging (Yadav et al., NeurIPS 2023),
DARE (Yu et al., ICML 2024).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator, Literal, Optional, Sequence

import torch
from peft.utils import merge_utils as peft_merge
from torch import Tensor

from ..layers.low_rank import lora_delta  # noqa: F401  (the dense delta of one LoRA expert, merged here)

__all__ = [
    "lora_delta",
    "lora_average",
    "task_arithmetic",
    "magnitude_prune",
    "ties",
    "dare_drop",
    "dare",
]

SignMethod = Literal["total", "frequency"]
# The merges that trim each expert to its top-``density`` entries by magnitude.
TRIMMING_MERGES = frozenset({"ties", "magnitude_prune"})


def check_deltas(deltas: Sequence[Tensor]) -> torch.Size:
    """Fail fast on an empty list or on experts whose delta shapes differ; returns the common shape."""
    if len(deltas) == 0:
        raise ValueError("merging needs at least one expert delta, got an empty list")
    shape = deltas[0].shape
    for k, d in enumerate(deltas):
        if d.shape != shape:
            raise ValueError(f"expert {k} delta has shape {tuple(d.shape)}, expert 0 has {tuple(shape)}")
    return shape


def expert_weights(
    weights: Optional[Sequence[float] | Tensor], num_experts: int, scale: float, like: Tensor
) -> Tensor:
    """(K,) per-expert weights times the global scale, as a tensor on ``like``'s device and dtype.

    ``weights=None`` means 1 for every expert (the papers' single ``lambda``).
    """
    if weights is None:
        w = torch.ones(num_experts, dtype=like.dtype, device=like.device)
    else:
        w = torch.as_tensor(weights, dtype=like.dtype, device=like.device).reshape(-1)
        if w.numel() != num_experts:
            raise ValueError(f"got {w.numel()} expert weights for {num_experts} experts")
    return w * scale


def _check_density(density: float) -> None:
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density (fraction of entries kept) must be in [0, 1], got {density}")


@contextmanager
def _density_one_is_no_trim() -> Iterator[None]:
    """Silence peft's warning for density >= 1: here that is the documented way to skip trimming."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The density .* no pruning will be performed")
        yield


def lora_average(deltas: Sequence[Tensor]) -> Tensor:
    """LoRA-Avg: uniform mean of the K deltas, ``(1/K) sum_k delta_k``."""
    check_deltas(deltas)
    return task_arithmetic(deltas, scale=1.0 / len(deltas))


def task_arithmetic(
    deltas: Sequence[Tensor], *, scale: float = 1.0, weights: Optional[Sequence[float] | Tensor] = None
) -> Tensor:
    """Task Arithmetic: ``scale * sum_k w_k delta_k`` (w_k = 1 unless given)."""
    check_deltas(deltas)
    w = expert_weights(weights, len(deltas), scale, deltas[0])
    return peft_merge.task_arithmetic(list(deltas), w)


def magnitude_prune(
    deltas: Sequence[Tensor],
    *,
    density: float,
    scale: float = 1.0,
    weights: Optional[Sequence[float] | Tensor] = None,
) -> Tensor:
    """Task Arithmetic over deltas trimmed to their top-``density`` fraction of entries by magnitude."""
    check_deltas(deltas)
    _check_density(density)
    w = expert_weights(weights, len(deltas), scale, deltas[0])
    with _density_one_is_no_trim():
        return peft_merge.magnitude_prune(list(deltas), w, density)


def ties(
    deltas: Sequence[Tensor],
    *,
    density: float,
    scale: float = 1.0,
    weights: Optional[Sequence[float] | Tensor] = None,
    majority_sign_method: SignMethod = "total",
) -> Tensor:
    """TIES-Merging of one layer.

    1. trim: keep each expert's top ``density`` fraction of entries by |value| (exactly ``int(density * numel)``
       entries, peft's rule), zero the rest;
    2. elect sign: per entry, the sign of the sum of the trimmed values (``"total"``) or of their signs
       (``"frequency"``); a zero sum elects +;
    3. disjoint merge: per entry, the mean of ``w_k * trimmed_k`` over the experts whose trimmed value has the
       elected sign (0 if none);
    then multiply by ``scale`` (the paper's lambda).
    """
    check_deltas(deltas)
    _check_density(density)
    w = expert_weights(weights, len(deltas), scale, deltas[0])
    with _density_one_is_no_trim():
        return peft_merge.ties(list(deltas), w, density, majority_sign_method=majority_sign_method)


def dare_drop(
    delta: Tensor,
    *,
    drop_rate: float,
    generator: Optional[torch.Generator] = None,
    keep_mask: Optional[Tensor] = None,
) -> Tensor:
    """DARE's drop-and-rescale of one delta: zero each entry with probability ``p`` and scale survivors by 1/(1-p).

    Args:
        delta: any shape.
        drop_rate: p in [0, 1).
        generator: torch generator on ``delta``'s device for the Bernoulli mask (reproducible draws).
        keep_mask: optional explicit mask (same shape, bool or 0/1) instead of a random draw.
    """
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"DARE drop rate must be in [0, 1), got {drop_rate}")
    if keep_mask is None:
        # Same draw as peft's random_pruning (bernoulli of the keep probability), but from an explicit generator.
        keep_mask = torch.bernoulli(torch.full_like(delta, 1.0 - drop_rate), generator=generator)
    elif keep_mask.shape != delta.shape:
        raise ValueError(f"DARE keep_mask shape {tuple(keep_mask.shape)} != delta shape {tuple(delta.shape)}")
    return delta * keep_mask.to(delta.dtype) / (1.0 - drop_rate)


def dare(
    deltas: Sequence[Tensor],
    *,
    drop_rate: float,
    combination: Literal["linear", "ties"] = "linear",
    scale: float = 1.0,
    weights: Optional[Sequence[float] | Tensor] = None,
    majority_sign_method: SignMethod = "total",
    seed: int = 0,
    generator: Optional[torch.Generator] = None,
    keep_masks: Optional[Sequence[Tensor]] = None,
) -> Tensor:
    """DARE: drop-and-rescale every expert's delta, then combine linearly (Task Arithmetic) or with TIES' sign
    election and disjoint mean (no further trimming), as peft's ``dare_linear`` / ``dare_ties``.

    The masks come from ``generator`` if given, else from a generator seeded with ``seed``; they are drawn expert
    by expert in order, so a generator seeded like peft's global RNG reproduces peft's masks exactly.
    ``keep_masks`` (one per expert) replaces the random draw.
    """
    check_deltas(deltas)
    if keep_masks is not None and len(keep_masks) != len(deltas):
        raise ValueError(f"got {len(keep_masks)} DARE keep masks for {len(deltas)} experts")
    if generator is None and keep_masks is None:
        generator = torch.Generator(device=deltas[0].device).manual_seed(seed)
    dropped = [
        dare_drop(d, drop_rate=drop_rate, generator=generator, keep_mask=None if keep_masks is None else keep_masks[k])
        for k, d in enumerate(deltas)
    ]
    w = expert_weights(weights, len(deltas), scale, deltas[0])
    if combination == "linear":
        return peft_merge.task_arithmetic(dropped, w)
    if combination == "ties":
        stacked = torch.stack(dropped, dim=0)
        sign_mask = peft_merge.calculate_majority_sign_mask(stacked, method=majority_sign_method)
        weighted = stacked * peft_merge.reshape_weight_task_tensors(stacked, w)
        return peft_merge.disjoint_merge(weighted, sign_mask)
    raise ValueError(f"unknown DARE combination {combination!r}; expected 'linear' or 'ties'")
