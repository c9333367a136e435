"""The folder layout of a ``SAGEPipeline`` run, read by the pipeline, the trainers, the analysis and ``--eval-only``
(stage folders come from ``plugins.sage.rows``):

    OUTPUT_DIR/
      pretrain/               optional shared pre-training (SAGE.PRETRAIN_DATASETS) -> vit.safetensors
      stage0/<tag>/           fast-reid baseline on one source (skipped when SAGE.SOURCE_WEIGHTS are given)
      stage0/blend/           "Blend + ViT": one model on the pooled sources
      stage0/avg/             "Avg + ViT": model.safetensors, the mean of the source models (no classifier)
      stage0/target_supervised/  the upper bound: ViT trained on the target's own labels
      stage1/<tag>/expert/    one LoRA expert per source, trained on the unlabelled target (peft layout + neck)
      stage1/blend/, stage1/avg/   one LoRA expert on the Blend / the mean backbone ("... + ViT (LoRA)")
      stage2/sage/            gate training; stage2/mole/ the MoLE baseline; stage2/without_<tag>/ leave-one-out
      analysis/               gate weights / correlation / CKA tables and heatmaps of the SAGE model
      lorahub_coefficients.json, results.json|md|csv
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from ..engine.stages import FINAL_CHECKPOINT
from ..tuners.expert_bank import CONFIG_NAME, WEIGHTS_NAME
from .config import source_tags
from .rows import row

__all__ = ["RunLayout", "final_checkpoint", "check_tags", "RunPaths", "run_paths", "EXPERT_SUBDIR", "PRETRAINED_VIT",
           "MEAN_SOURCE_FILE", "RESERVED_TAGS", "TRAINED_GATES"]

EXPERT_SUBDIR = "expert"  # a stage-1 folder's exported adapter (peft layout + neck.safetensors)
PRETRAINED_VIT = "vit.safetensors"
MEAN_SOURCE_FILE = "model.safetensors"
_MEAN_SOURCE_DIR = "stage0/avg"
# stage folders of rows that are not a source: a source tag may not take these names
RESERVED_TAGS: Tuple[str, ...] = ("blend", "avg", "target_supervised")
# SAGE.GATE.KIND values with a stage-2 folder of their own (the trained gated models)
TRAINED_GATES: Tuple[str, ...] = ("sage", "mole")


class RunLayout:
    """Paths of one run rooted at ``OUTPUT_DIR``."""

    def __init__(self, root: str):
        self.root = root

    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    # stage 0 and the single models
    @property
    def pretrain_dir(self) -> str:
        return self._path("pretrain")

    @property
    def pretrained_vit(self) -> str:
        return self._path("pretrain", PRETRAINED_VIT)

    def source_dir(self, tag: str) -> str:
        return self._path(row("source").folder.format(tag=tag))

    @property
    def blend_dir(self) -> str:
        return self._path(row("blend").folder)

    @property
    def mean_source(self) -> str:
        """The mean of the source models as one fast-reid state dict (classifier excluded)."""
        return self._path(_MEAN_SOURCE_DIR, MEAN_SOURCE_FILE)

    @property
    def supervised_dir(self) -> str:
        return self._path(row("supervised").folder)

    # stage 1
    def expert_stage_dir(self, tag: str) -> str:
        """stage1/<tag> of a source; ``tag`` "blend" / "avg": the Blend / mean-backbone expert."""
        key = {"blend": "blend_vit_lora", "avg": "avg_vit_lora"}.get(tag)
        return self._path(row(key).folder if key else row("expert").folder.format(tag=tag))

    def expert_dir(self, tag: str) -> str:
        return os.path.join(self.expert_stage_dir(tag), EXPERT_SUBDIR)

    # stage 2
    def gate_dir(self, gate: str) -> str:
        """The stage-2 folder of gate kind ``gate`` ("sage" or "mole")."""
        if gate not in TRAINED_GATES:
            raise ValueError(f"gate must be one of {TRAINED_GATES} (the gated models SAGEPipeline trains), "
                             f"got {gate!r}")
        return self._path(row(gate).folder)

    def leave_one_out_dir(self, tag: str) -> str:
        return self._path(row("leave_one_out").folder.format(tag=tag))

    # outputs
    @property
    def analysis_dir(self) -> str:
        return self._path("analysis")

    @property
    def lorahub_coefficients(self) -> str:
        return self._path("lorahub_coefficients.json")


def final_checkpoint(stage_dir: str) -> str:
    """The final fast-reid checkpoint a stage folder holds when complete."""
    return os.path.join(stage_dir, FINAL_CHECKPOINT)


def check_tags(tags: Sequence[str]) -> None:
    """Source tags name stage folders: refuse the names of the other rows' folders."""
    clash = [t for t in tags if t in RESERVED_TAGS]
    if clash:
        raise ValueError(f"SAGE.SOURCE_TAGS {list(tags)}: {clash} would share a stage folder with another row "
                         f"(reserved: {list(RESERVED_TAGS)}); choose other tags")


@dataclass(frozen=True)
class RunPaths:
    """Where a finished run keeps its stage-2 model's inputs; one entry per source, in ``SAGE.SOURCES`` order."""

    source_weights: Tuple[str, ...]  # stage-0 source checkpoints
    expert_dirs: Tuple[str, ...]     # stage-1 expert folders (peft layout + neck)
    expert_names: Tuple[str, ...]    # SAGE.SOURCE_TAGS, or the lower-cased SAGE.SOURCES
    stage2_checkpoint: str           # the trained gated model
    gate: str                        # its gate kind


def run_paths(cfg, *, gate: str = "sage") -> RunPaths:
    """The checkpoints of the run in ``cfg.OUTPUT_DIR`` (``--eval-only``, the analysis): given
    ``SAGE.SOURCE_WEIGHTS`` / ``SAGE.EXPERT_DIRS`` first, else the pipeline's own stage folders. Raises
    FileNotFoundError naming every missing file and the stage that writes it."""
    layout = RunLayout(cfg.OUTPUT_DIR)
    stage2 = final_checkpoint(layout.gate_dir(gate))
    s = cfg.SAGE
    sources, names = source_tags(cfg)
    given = {key: list(s.get(key)) for key in ("SOURCE_WEIGHTS", "EXPERT_DIRS")}
    missing: List[str] = []  # "<path> (<who makes it>)"
    weights, experts = [], []
    for k, (source, tag) in enumerate(zip(sources, names)):
        if given["SOURCE_WEIGHTS"]:
            path, made_by = given["SOURCE_WEIGHTS"][k], f"given in SAGE.SOURCE_WEIGHTS[{k}]"
        else:
            path = final_checkpoint(layout.source_dir(tag))
            made_by = f"written by stage 0, the source model on {source}"
        weights.append(path)
        if not os.path.isfile(path):
            missing.append(f"{path} ({made_by})")
        if given["EXPERT_DIRS"]:
            folder, made_by = given["EXPERT_DIRS"][k], f"given in SAGE.EXPERT_DIRS[{k}]"
        else:
            folder = layout.expert_dir(tag)
            made_by = f"written by stage 1, the expert of source {source}"
        experts.append(folder)
        files = (os.path.join(folder, CONFIG_NAME), os.path.join(folder, WEIGHTS_NAME))
        missing += [f"{p} ({made_by})" for p in files if not os.path.isfile(p)]
    if not os.path.isfile(stage2):
        made_by = ("written by stage 2, the SAGE gate training (SAGE.GATE.KIND sage)" if gate == "sage" else
                   "written by stage 2, the MoLE gate training ('mole' in SAGE.BASELINES or SAGE.GATE.KIND mole)")
        missing.append(f"{stage2} ({made_by})")
    if missing:
        raise FileNotFoundError(f"the SAGE run in OUTPUT_DIR {cfg.OUTPUT_DIR!r} is incomplete; missing:\n  "
                                + "\n  ".join(missing) + "\nrun the pipeline (tools/train_net.py with the same "
                                "config) to produce them, or point SAGE.SOURCE_WEIGHTS / SAGE.EXPERT_DIRS at them")
    return RunPaths(source_weights=tuple(weights), expert_dirs=tuple(experts), expert_names=tuple(names),
                    stage2_checkpoint=stage2, gate=gate)
