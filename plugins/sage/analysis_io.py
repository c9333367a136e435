"""The SAGE analyses (``analysis.run_analysis``) on a finished ``SAGEPipeline`` run: find its checkpoints, rebuild
the stage-2 model and the K single experts, and feed them the target query images.

    analyze_pipeline_run(cfg)   # cfg: the run's config; writes OUTPUT_DIR/analysis/

The run's folders are read as ``SAGEPipeline`` writes them (``pipeline.py``): ``stage0/<tag>/model_final.pth``
(or ``SAGE.SOURCE_WEIGHTS``), ``stage1/<tag>/expert/`` (or ``SAGE.EXPERT_DIRS``) and
``stage2/<sage|mole>/model_final.pth``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from fastreid.data.datasets import DATASET_REGISTRY
from torch import nn

from ..engine.loaders import make_test_loader
from ..engine.stages import FINAL_CHECKPOINT
from ..tuners.expert_bank import CONFIG_NAME, WEIGHTS_NAME
from .analysis import run_analysis
from .builders import CLASSIFIER_KEY, build_gated_model, load_expert_model, load_model_state
from .config import eval_model_cfg, source_tags
from .trainers import EXPERT_SUBDIR

__all__ = ["PipelinePaths", "pipeline_paths", "load_stage2_model", "query_loader",
           "analyze_pipeline_run", "GATE_FOLDERS"]

logger = logging.getLogger("fastreid." + __name__)

# gate kind -> the stage-2 folder SAGEPipeline trains it in (the main row, or the MoLE baseline)
GATE_FOLDERS = {"sage": "sage", "mole": "mole"}


@dataclass(frozen=True)
class PipelinePaths:
    """Where a finished run keeps what the analysis needs; one entry per source, in ``SAGE.SOURCES`` order."""

    source_weights: Tuple[str, ...]  # stage-0 source checkpoints
    expert_dirs: Tuple[str, ...]     # stage-1 expert folders (peft layout + neck)
    expert_names: Tuple[str, ...]    # SAGE.SOURCE_TAGS, or the lower-cased SAGE.SOURCES
    stage2_checkpoint: str           # the trained gated model
    gate: str                        # its gate kind


def _check_gate(gate: str) -> None:
    if gate not in GATE_FOLDERS:
        raise ValueError(f"gate must be one of {sorted(GATE_FOLDERS)} (the gated models SAGEPipeline trains), "
                         f"got {gate!r}")


def pipeline_paths(cfg, *, gate: str = "sage") -> PipelinePaths:
    """The checkpoints of the run in ``cfg.OUTPUT_DIR``: given ``SAGE.SOURCE_WEIGHTS`` / ``SAGE.EXPERT_DIRS`` first,
    else the pipeline's own stage folders. Raises FileNotFoundError naming every missing file and its stage."""
    _check_gate(gate)
    s, root = cfg.SAGE, cfg.OUTPUT_DIR
    sources, names = source_tags(cfg)
    given = {key: list(s.get(key)) for key in ("SOURCE_WEIGHTS", "EXPERT_DIRS")}

    missing: List[str] = []  # "<path> (<who makes it>)"
    weights, experts = [], []
    for k, (source, tag) in enumerate(zip(sources, names)):
        if given["SOURCE_WEIGHTS"]:
            path, made_by = given["SOURCE_WEIGHTS"][k], f"given in SAGE.SOURCE_WEIGHTS[{k}]"
        else:
            path = os.path.join(root, "stage0", tag, FINAL_CHECKPOINT)
            made_by = f"written by stage 0, the source model on {source}"
        weights.append(path)
        if not os.path.isfile(path):
            missing.append(f"{path} ({made_by})")
        if given["EXPERT_DIRS"]:
            folder, made_by = given["EXPERT_DIRS"][k], f"given in SAGE.EXPERT_DIRS[{k}]"
        else:
            folder = os.path.join(root, "stage1", tag, EXPERT_SUBDIR)
            made_by = f"written by stage 1, the expert of source {source}"
        experts.append(folder)
        files = (os.path.join(folder, CONFIG_NAME), os.path.join(folder, WEIGHTS_NAME))
        missing += [f"{p} ({made_by})" for p in files if not os.path.isfile(p)]
    stage2 = os.path.join(root, "stage2", GATE_FOLDERS[gate], FINAL_CHECKPOINT)
    if not os.path.isfile(stage2):
        made_by = ("written by stage 2, the SAGE gate training (SAGE.GATE.KIND sage)" if gate == "sage" else
                   "written by stage 2, the MoLE gate training ('mole' in SAGE.BASELINES or SAGE.GATE.KIND mole)")
        missing.append(f"{stage2} ({made_by})")
    if missing:
        raise FileNotFoundError(f"the SAGE run in OUTPUT_DIR {root!r} is incomplete; missing:\n  "
                                + "\n  ".join(missing) + "\nrun the pipeline (tools/train_net.py with the same "
                                "config) to produce them, or point SAGE.SOURCE_WEIGHTS / SAGE.EXPERT_DIRS at them")
    return PipelinePaths(source_weights=tuple(weights), expert_dirs=tuple(experts), expert_names=tuple(names),
                         stage2_checkpoint=stage2, gate=gate)


def load_stage2_model(cfg, paths: PipelinePaths) -> nn.Module:
    """The stage-2 gated model: built from the sources and experts, then the trained checkpoint loaded over it.

    Only the classifier ``heads.weight`` may be skipped (its row count is the number of pseudo-identities of the
    last clustering, unknown here, and evaluation does not use it); any other missing, unexpected or differently
    shaped tensor is an error (KeyError / ValueError), e.g. a checkpoint of another gate kind.
    """
    model = build_gated_model(cfg, paths.source_weights, paths.expert_dirs, gate=paths.gate)
    state = load_model_state(paths.stage2_checkpoint)
    if all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    own = model.state_dict()
    if CLASSIFIER_KEY in state and state[CLASSIFIER_KEY].shape != own[CLASSIFIER_KEY].shape:
        state = {k: v for k, v in state.items() if k != CLASSIFIER_KEY}
    what = f"stage-2 checkpoint {paths.stage2_checkpoint!r} does not fit the gated model built with gate {paths.gate!r}"
    # checked here so that the error names the gate kind (a MoLE gate has the SAGE gate's keys, not its shapes)
    wrong = [f"{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"{what}: {len(wrong)} tensors differ in shape, e.g. {wrong[:3]}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != CLASSIFIER_KEY]
    if missing or unexpected:
        raise KeyError(f"{what}: missing {missing[:5]} ({len(missing)} keys), unexpected {list(unexpected)[:5]} "
                       f"({len(unexpected)} keys)")
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def query_loader(cfg, dataset_name: str, *, max_images: int = 0):
    """fast-reid test loader over the query images of ``dataset_name`` (the first ``max_images`` when > 0), with
    the test transforms; batches are fast-reid dicts (images (B, 3, H, W), targets, camids, img_paths)."""
    data = DATASET_REGISTRY.get(dataset_name)(root=os.getenv("FASTREID_DATASETS", "datasets"))
    items = list(data.query)[:max_images] if max_images > 0 else list(data.query)
    if not items:
        raise ValueError(f"dataset {dataset_name!r} has no query images")
    loader, _ = make_test_loader(cfg, items)
    return loader


def analyze_pipeline_run(cfg, *, output_dir: Optional[str] = None, gate: str = "sage", reduce: str = "mean",
                         max_images: int = 0, progress: bool = True) -> Dict[str, Any]:
    """Gate statistics and expert-vs-merged CKA (Appendices E, F, H) of the run in ``cfg.OUTPUT_DIR`` over the
    query images of the target test set ``DATASETS.TESTS[0]``.

    Args:
        output_dir: where the tables and heatmaps go; default ``OUTPUT_DIR/analysis``.
        gate: which stage-2 model, "sage" (``stage2/sage``) or "mole" (``stage2/mole``).
        reduce: per-image row of a layer output for CKA. "mean" (default) averages the tokens; with "cls" the
            class-token row of block 0's QKV is the same for every image (the class token has not attended to
            the image yet), so that layer's CKA is undefined (NaN).
        max_images: analyse only the first N query images (0: all).
    Returns:
        ``run_analysis``'s dict plus "paths" (``PipelinePaths``) and "output_dir".
    """
    if len(cfg.DATASETS.TESTS) != 1:
        raise ValueError(f"DATASETS.TESTS must name exactly one target test set, got {tuple(cfg.DATASETS.TESTS)}")
    paths = pipeline_paths(cfg, gate=gate)
    out = output_dir or os.path.join(cfg.OUTPUT_DIR, "analysis")
    mcfg = eval_model_cfg(cfg)
    device = torch.device(mcfg.MODEL.DEVICE)
    merged = load_stage2_model(mcfg, paths).to(device)
    experts = [load_expert_model(mcfg, w, d).to(device) for w, d in zip(paths.source_weights, paths.expert_dirs)]
    loader = query_loader(mcfg, cfg.DATASETS.TESTS[0], max_images=max_images)
    logger.info(f"analysing {paths.stage2_checkpoint} against experts {list(paths.expert_names)} on the query "
                f"images of {cfg.DATASETS.TESTS[0]}; writing to {out}")
    result = run_analysis(merged_model=merged, expert_models=experts, expert_names=paths.expert_names,
                          loader=loader, output_dir=out, reduce=reduce, progress=progress)
    return dict(result, paths=paths, output_dir=out)
