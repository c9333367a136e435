"""Every row of ``SAGEPipeline``'s results table, in one table: key -> display name, kind, group, and what builds it
(the merge method of a static merge, the registered router of a gate, the stage folder of a trained row).

Rows selected by ``SAGE.BASELINES`` are the ``BASELINES`` keys; the others are always there (source models, the
single experts, SAGE) or have their own switch (``SAGE.BLEND``, ``SAGE.LEAVE_ONE_OUT``). Per-source rows have a
``{source}`` placeholder in their name. The order of ``ROWS`` is the order of the results table.

Kinds (how the pipeline makes the row):
    "source"        a stage-0 model trained on labelled source data (per source, or the pooled sources: Blend)
    "mean backbone" the element-wise mean of the source models, evaluated without adaptation (Avg + ViT)
    "expert"        one LoRA expert on one frozen backbone, trained on the target with pseudo-labels (stage 1)
    "static merge"  the K experts folded into the mean backbone by a training-free merge (plugins.tuners.merge)
    "learned merge" LoRAHub: static coefficients fitted on target pseudo-labels
    "gate"          stage 2: the K experts gated per sample by a registered router, trained on pseudo-labels
    "upper bound"   ViT trained on the target's own labels (needs a labelled target train set)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

__all__ = ["RowSpec", "ROWS", "BASELINES", "KINDS", "GATES", "STATIC_MERGES", "row", "gate_router", "row_name"]

KINDS = ("source", "mean backbone", "expert", "static merge", "learned merge", "gate", "upper bound")


@dataclass(frozen=True)
class RowSpec:
    """One results row. ``folder``: its stage folder under OUTPUT_DIR (``{tag}``: the source's tag), "" when the row
    is only evaluated. ``merge`` / ``merge_options``: the ``plugins.tuners.merge`` method of a static merge and the
    arguments this row fixes (the rest come from ``SAGE.MERGE``). ``gate``: the ``SAGE.GATE.KIND`` value that builds
    this row's gated model, ``router`` its ``ROUTER_REGISTRY`` name ("" for the uniform average)."""

    key: str
    name: str
    kind: str
    group: str
    baseline: bool = False  # selected by SAGE.BASELINES
    folder: str = ""
    merge: str = ""
    merge_options: Mapping[str, str] = field(default_factory=dict)
    gate: str = ""
    router: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"row {self.key!r}: kind {self.kind!r} is not one of {KINDS}")


ROWS: Tuple[RowSpec, ...] = (
    RowSpec("source", "source-only: {source}", "source", "source model", folder="stage0/{tag}"),
    RowSpec("blend", "Blend + ViT", "source", "source model", folder="stage0/blend"),  # SAGE.BLEND
    RowSpec("avg_vit", "Avg + ViT", "mean backbone", "source model", baseline=True),
    RowSpec("expert", "expert: {source}", "expert", "single expert", folder="stage1/{tag}"),
    RowSpec("blend_vit_lora", "Blend + ViT (LoRA)", "expert", "single expert", baseline=True, folder="stage1/blend"),
    RowSpec("avg_vit_lora", "Avg + ViT (LoRA)", "expert", "single expert", baseline=True, folder="stage1/avg"),
    RowSpec("lora_avg", "LoRA-Avg", "static merge", "static merge", baseline=True, merge="lora_average",
            gate="avg"),
    RowSpec("task_arithmetic", "Task Arithmetic", "static merge", "static merge", baseline=True,
            merge="task_arithmetic"),
    RowSpec("ties", "TIES", "static merge", "static merge", baseline=True, merge="ties"),
    RowSpec("dare", "DARE", "static merge", "static merge", baseline=True, merge="dare"),
    RowSpec("knots_ta", "KnOTS-TA", "static merge", "static merge", baseline=True, merge="knots",
            merge_options={"combination": "task_arithmetic"}),
    RowSpec("knots_ties", "KnOTS-TIES", "static merge", "static merge", baseline=True, merge="knots",
            merge_options={"combination": "ties"}),
    RowSpec("tsv_merge", "TSV-M", "static merge", "static merge", baseline=True, merge="tsv_merge"),
    RowSpec("lorahub", "LoRAHub", "learned merge", "learned merge", baseline=True),
    RowSpec("mole", "MoLE", "gate", "learned merge", baseline=True, folder="stage2/mole", gate="mole",
            router="MoLEGate"),
    RowSpec("sage", "SAGE", "gate", "learned merge", folder="stage2/sage", gate="sage", router="SAGEGate"),
    RowSpec("leave_one_out", "SAGE w/o {source}", "gate", "leave-one-out", folder="stage2/without_{tag}"),  # SAGE.LEAVE_ONE_OUT
    RowSpec("supervised", "ViT (target labels)", "upper bound", "upper bound (target labels)", baseline=True,
            folder="stage0/target_supervised"),
)

_BY_KEY: Dict[str, RowSpec] = {r.key: r for r in ROWS}
if len(_BY_KEY) != len(ROWS):
    raise RuntimeError("plugins.sage.rows: duplicate row keys")

# SAGE.BASELINES entries, in table order.
BASELINES: Tuple[str, ...] = tuple(r.key for r in ROWS if r.baseline)
# static merge rows, in table order.
STATIC_MERGES: Tuple[str, ...] = tuple(r.key for r in ROWS if r.kind == "static merge")
# SAGE.GATE.KIND value -> router name ("" = the uniform average, no router), from the rows that define one.
GATES: Dict[str, str] = {r.gate: r.router for r in ROWS if r.gate}


def row(key: str) -> RowSpec:
    """The row ``key``; KeyError naming the known keys otherwise."""
    if key not in _BY_KEY:
        raise KeyError(f"unknown results row {key!r}; known: {sorted(_BY_KEY)}")
    return _BY_KEY[key]


def row_name(key: str, source: Optional[str] = None) -> str:
    """The display name of row ``key`` (per-source rows need ``source``)."""
    spec = row(key)
    if "{source}" in spec.name:
        if source is None:
            raise ValueError(f"row {key!r} is per source: pass the source name")
        return spec.name.format(source=source)
    return spec.name


def gate_router(gate: str) -> str:
    """The router name of gate kind ``gate`` ("" for "avg"); ValueError naming the kinds otherwise."""
    if gate not in GATES:
        raise ValueError(f"unknown gate kind {gate!r}; expected one of {sorted(GATES)}")
    return GATES[gate]
