"""Expert-merging baselines as pure functions, and a helper that applies one to every layer of K experts.

Per-layer functions (``deltas``: the K experts' task deltas of one layer, each (d_out, d_in)):

=================  =====================================================  ==========================
name               merge                                                  key arguments
=================  =====================================================  ==========================
lora_average       (1/K) sum_k delta_k                                    --
task_arithmetic    scale * sum_k w_k delta_k                              scale, weights
magnitude_prune    task arithmetic of magnitude-trimmed deltas            density, scale
ties               trim, elect sign, disjoint mean                        density, scale
dare               drop p, rescale 1/(1-p), then linear or TIES           drop_rate, combination, seed
knots              shared SVD basis, merge coefficients (TA/TIES/DARE)    combination, + its arguments
tsv_merge          top-1/K task singular vectors, orthogonalised, summed  rank_per_task, scale
=================  =====================================================  ==========================
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from . import merge_basic, merge_svd
from .merge_basic import (TRIMMING_MERGES, dare, dare_drop, lora_average, lora_delta,  # noqa: F401
                          magnitude_prune, task_arithmetic, ties)
from .merge_svd import (LowRankDelta, factored_svd, knots, knots_factors, thin_svd, tsv_merge,  # noqa: F401
                        tsv_merge_factors)

__all__ = ["MERGE_METHODS", "merge_deltas", "merge_state_dicts", "trim_over_model",
           *merge_basic.__all__, *merge_svd.__all__]

MERGE_METHODS: dict[str, Callable[..., Tensor]] = {
    "lora_average": lora_average,
    "task_arithmetic": task_arithmetic,
    "magnitude_prune": magnitude_prune,
    "ties": ties,
    "dare": dare,
    "knots": knots,
    "tsv_merge": tsv_merge,
}

# Methods that use LowRankDelta factors directly; the others get dense deltas.
_FACTORED = {"knots", "tsv_merge"}
# Methods that draw random masks: merge_state_dicts threads one seeded generator through all their layers.
_STOCHASTIC = {"dare"}
TRIM_SCOPES = ("layer", "model")


def merge_deltas(deltas: Sequence[Tensor | LowRankDelta], method: str, **kwargs) -> Tensor:
    """Merge one layer's K deltas (dense, or ``LowRankDelta`` factors) with ``MERGE_METHODS[method]``."""
    if method not in MERGE_METHODS:
        raise ValueError(f"unknown merge method {method!r}; expected one of {sorted(MERGE_METHODS)}")
    if method not in _FACTORED:
        deltas = [d.dense() if isinstance(d, LowRankDelta) else d for d in deltas]
    return MERGE_METHODS[method](deltas, **kwargs)


def _is_stochastic(method: str, kwargs: Mapping) -> bool:
    return method in _STOCHASTIC or (method == "knots" and kwargs.get("combination") in _STOCHASTIC)


def trim_over_model(deltas_per_expert: Sequence[Mapping[str, Tensor | LowRankDelta]], density: float
                    ) -> list[dict[str, Tensor]]:
    """The TIES paper's trim: each expert keeps its top ``density`` fraction of entries by |value| over ALL its
    layers together (one threshold per expert), the others set to 0. Entries equal to the threshold are kept."""
    out = []
    for sd in deltas_per_expert:
        dense = {k: (d.dense() if isinstance(d, LowRankDelta) else d) for k, d in sd.items()}
        magnitudes = torch.cat([d.abs().flatten() for d in dense.values()])
        keep = int(density * magnitudes.numel())
        if keep <= 0:
            out.append({k: torch.zeros_like(d) for k, d in dense.items()})
            continue
        threshold = magnitudes.kthvalue(magnitudes.numel() - keep + 1).values  # the keep-th largest
        out.append({k: d * (d.abs() >= threshold) for k, d in dense.items()})
    return out


def merge_state_dicts(
    deltas_per_expert: Sequence[Mapping[str, Tensor | LowRankDelta]],
    method: str,
    *,
    progress: bool = False,
    trim_scope: str = "layer",
    **kwargs,
) -> dict[str, Tensor]:
    """Apply one merge method layer by layer.

    Args:
        deltas_per_expert: K dicts ``layer name -> delta`` (same keys and shapes in every dict); a delta may be a
            ``LowRankDelta`` (LoRA factors), which KnOTS / TSV-M factorise exactly and fast.
        method: a key of ``MERGE_METHODS``.
        progress: show a tqdm bar over the layers (SVD methods take seconds per layer on CPU).
        trim_scope: where TIES / magnitude pruning rank magnitudes: ``"layer"`` (per layer, as peft does) or
            ``"model"`` (over all layers of an expert at once, as the TIES paper does).
        kwargs: arguments of the method. For DARE (also KnOTS with ``combination="dare"``) ``seed`` seeds one
            generator that draws the masks of all layers in key order, so layers get independent masks and the
            whole merge is reproducible.
    Returns:
        ``layer name -> merged delta`` in the key order of the first expert.
    """
    if len(deltas_per_expert) == 0:
        raise ValueError("merge_state_dicts needs at least one expert state dict")
    if method not in MERGE_METHODS:
        raise ValueError(f"unknown merge method {method!r}; expected one of {sorted(MERGE_METHODS)}")
    keys = list(deltas_per_expert[0].keys())
    for k, sd in enumerate(deltas_per_expert[1:], start=1):
        missing, extra = set(keys) - set(sd), set(sd) - set(keys)
        if missing or extra:
            raise KeyError(
                f"expert {k} layer keys differ from expert 0: missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}"
            )
    if trim_scope not in TRIM_SCOPES:
        raise ValueError(f"trim_scope must be one of {TRIM_SCOPES}, got {trim_scope!r}")
    if trim_scope == "model" and method in TRIMMING_MERGES:
        deltas_per_expert = trim_over_model(deltas_per_expert, float(kwargs["density"]))
        kwargs = dict(kwargs, density=1.0)  # already trimmed: the per-layer step only elects signs and merges
    if _is_stochastic(method, kwargs) and "generator" not in kwargs and keys:
        seed = int(kwargs.pop("seed", 0))
        kwargs["generator"] = torch.Generator(device=deltas_per_expert[0][keys[0]].device).manual_seed(seed)
    merged: dict[str, Tensor] = {}
    for key in tqdm(keys, desc=f"merge ({method})", disable=not progress):
        try:
            merged[key] = merge_deltas([sd[key] for sd in deltas_per_expert], method, **kwargs)
        except ValueError as err:
            raise ValueError(f"layer {key!r}: {err}") from err
    return merged
