"""The SAGE analyses (``analysis.run_analysis``) on a finished ``SAGEPipeline`` run: find its checkpoints, rebuild
the stage-2 model and the K single experts, and feed them the target query images.

    analyze_pipeline_run(cfg)   # cfg: the run's config; writes OUTPUT_DIR/analysis/

The run's folders are read through ``plugins.sage.layout`` (``run_paths``): ``stage0/<tag>/model_final.pth`` (or
``SAGE.SOURCE_WEIGHTS``), ``stage1/<tag>/expert/`` (or ``SAGE.EXPERT_DIRS``) and ``stage2/<sage|mole>/model_final.pth``.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

import torch
from fastreid.data.datasets import DATASET_REGISTRY
from torch import nn

from ..engine.loaders import make_test_loader
from .analysis import run_analysis
from .builders import load_expert_model, load_gated_model
from .config import eval_model_cfg
from .layout import RunLayout, RunPaths, run_paths

__all__ = ["load_stage2_model", "query_loader", "analyze_pipeline_run"]

logger = logging.getLogger("fastreid." + __name__)


def load_stage2_model(cfg, paths: RunPaths) -> nn.Module:
    """The trained stage-2 gated model of ``paths`` (``builders.load_gated_model``), frozen."""
    return load_gated_model(cfg, paths.source_weights, paths.expert_dirs, paths.stage2_checkpoint, gate=paths.gate)


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
        ``run_analysis``'s dict plus "paths" (``RunPaths``) and "output_dir".
    """
    if len(cfg.DATASETS.TESTS) != 1:
        raise ValueError(f"DATASETS.TESTS must name exactly one target test set, got {tuple(cfg.DATASETS.TESTS)}")
    paths = run_paths(cfg, gate=gate)
    out = output_dir or RunLayout(cfg.OUTPUT_DIR).analysis_dir
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
