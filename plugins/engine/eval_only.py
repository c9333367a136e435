"""``--eval-only`` that never scores the wrong model and never writes over the run it evaluates.

- **What is evaluated.** A trainer whose ``build_model`` rebuilds the trained model from its run folder declares
  ``BUILDS_TRAINED_MODEL = True`` (SAGE: sources, experts and gates from ``OUTPUT_DIR``); its run folder must exist
  and ``MODEL.WEIGHTS`` must be empty (a file loaded over the rebuilt model would silently change it). Every other
  trainer needs ``MODEL.WEIGHTS``: without it a randomly initialised model would be scored.
- **Strict loading.** Every model key must be in the checkpoint with its shape, and every checkpoint key must be
  in the model, except the keys of :data:`EVAL_OPTIONAL_KEYS` (classifiers and identity prompts: a checkpoint
  trained on another identity set evaluates the same features), which are skipped with a log line. Anything
  else fails naming the file and the first keys at fault.
- **Its own record.** The log, the config and ``results.json`` of an evaluation go to
  ``<OUTPUT_DIR>/eval/<timestamp>/``, beside the run's own ``config.yaml`` and ``log.txt``, never over them.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..compat.checkpoint import load_checkpoint_file

__all__ = ["EVAL_OPTIONAL_KEYS", "EvalOnlyError", "check_eval_request", "eval_record_dir", "load_eval_weights",
           "write_eval_record"]

logger = logging.getLogger("fastreid." + __name__)

# Keys that only training reads: classifiers over the training identities (fast-reid's ``heads.weight``, the
# plugins' ``classifier*.weight``) and CLIP-ReID's identity prompt learner (per-identity contexts and the template
# embeddings around them). A model or checkpoint may lack them, or hold them for another number of identities;
# BatchNorm's step counter is bookkeeping.
EVAL_OPTIONAL_KEYS: Tuple[str, ...] = (r"^heads\.weight$", r"(^|\.)classifier\w*\.(weight|bias)$",
                                       r"(^|\.)prompt_learner\.", r"\.num_batches_tracked$")
SHOW = 5  # keys named in an error


class EvalOnlyError(ValueError):
    """An evaluation request that would score the wrong model; the message names the key or file at fault."""


def check_eval_request(cfg, trainer_cls) -> None:
    """Refuse, before anything is built or written, an evaluation that would not score a trained model."""
    name = trainer_cls.__name__
    weights = str(cfg.MODEL.WEIGHTS or "")
    if getattr(trainer_cls, "BUILDS_TRAINED_MODEL", False):
        if weights:
            raise EvalOnlyError(f"--eval-only with PLUGINS.TRAINER {name} rebuilds the trained model from OUTPUT_DIR "
                                f"'{cfg.OUTPUT_DIR}'; MODEL.WEIGHTS '{weights}' would be loaded over it. Leave "
                                f"MODEL.WEIGHTS empty")
        if not os.path.isdir(cfg.OUTPUT_DIR):
            raise EvalOnlyError(f"--eval-only with PLUGINS.TRAINER {name} evaluates the run in OUTPUT_DIR "
                                f"'{cfg.OUTPUT_DIR}', which does not exist (mistyped?)")
        return
    if not weights:
        raise EvalOnlyError("--eval-only needs MODEL.WEIGHTS (a trained checkpoint): without it a randomly "
                            "initialised model would be scored")
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.WEIGHTS '{weights}' does not exist")


def eval_record_dir(output_dir: str, stamp: Optional[str] = None) -> str:
    """``<output_dir>/eval/<timestamp>``: a fresh folder for one evaluation's log, config and results."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(output_dir, "eval", stamp)
    k = 1
    while os.path.exists(path):
        k += 1
        path = os.path.join(output_dir, "eval", f"{stamp}-{k}")
    return path


def _optional(key: str, patterns: Sequence[str]) -> bool:
    return any(re.search(p, key) for p in patterns)


def _strip_module(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Drop DistributedDataParallel's ``module.`` prefix when every key carries it."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def load_eval_weights(model: nn.Module, path: str, *, optional: Sequence[str] = EVAL_OPTIONAL_KEYS) -> List[str]:
    """Load ``path`` (``{"model": state_dict}`` or a bare state dict; safe loader) into ``model`` strictly except
    the ``optional`` key patterns; returns the optional keys skipped. Raises :class:`EvalOnlyError` naming the file
    and the first missing / unexpected / mis-shaped keys."""
    state = load_checkpoint_file(path)["model"]
    if not isinstance(state, Mapping):
        raise EvalOnlyError(f"'{path}': 'model' holds a {type(state).__name__}, expected a state dict")
    state = _strip_module(state)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mis_shaped = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own
                  if k in state and torch.is_tensor(state[k]) and tuple(state[k].shape) != tuple(own[k].shape)]
    shape_keys = [s.split(" ", 1)[0] for s in mis_shaped]
    problems = []
    for what, keys, names in (("missing from the checkpoint", missing, missing),
                              ("not in the model", unexpected, unexpected),
                              ("of another shape", shape_keys, mis_shaped)):
        bad = [n for k, n in zip(keys, names) if not _optional(k, optional)]
        if bad:
            problems.append(f"{len(bad)} keys {what}: {bad[:SHOW]}")
    if problems:
        raise EvalOnlyError(f"MODEL.WEIGHTS '{path}' does not fit {type(model).__name__} "
                            f"(evaluation loads strictly): " + "; ".join(problems))
    skipped = sorted(set(missing + unexpected + shape_keys))
    load = {k: v for k, v in state.items() if k in own and k not in skipped}
    model.load_state_dict(load, strict=False)
    if skipped:
        logger.info(f"{path}: loaded {len(load)} tensors; skipped {len(skipped)} training-only keys (allow-list "
                    f"plugins.engine.eval_only.EVAL_OPTIONAL_KEYS): {skipped[:SHOW]}")
    else:
        logger.info(f"{path}: loaded all {len(load)} tensors strictly")
    return skipped


def write_eval_record(directory: str, *, weights: str, results: Mapping) -> str:
    """``<directory>/results.json`` of one evaluation (atomic); returns its path."""
    def plain(v):
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        return float(v) if hasattr(v, "__float__") else str(v)

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"weights": weights, "results": plain(results)}, f, indent=2)
    os.replace(path + ".tmp", path)
    return path
