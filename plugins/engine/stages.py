"""Stage folders of multi-stage pipelines (SAGE-reID, CLIP-ReID): each stage trains in its own ``OUTPUT_DIR``;
a folder holding ``done.json`` is complete and skipped; a stage interrupted mid-way resumes from its last
checkpoint (fast-reid's ``last_checkpoint``). Under torch.distributed every rank runs the same stages; rank 0
writes the files. With ``PLUGINS.SEED >= 0`` each stage starts from a seed derived from the run's seed and the stage's
title, and each of its epochs from one derived from that and the epoch (``plugins.engine.seeding``), so a resumed run
ends with the same numbers as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
from typing import Callable, Dict, Optional

from fastreid.utils import comm

from .results import metrics_of
from .seeding import install_epoch_seeding, seed_stage

__all__ = ["DONE_FILE", "FINAL_CHECKPOINT", "from_main", "stage_log", "read_done", "write_done",
           "repair_last_checkpoint", "run_stage"]

logger = logging.getLogger("fastreid." + __name__)

DONE_FILE = "done.json"
FINAL_CHECKPOINT = "model_final.pth"


def from_main(value):
    """``value`` of rank 0 on every rank."""
    return comm.all_gather(value)[0] if comm.get_world_size() > 1 else value


@contextlib.contextmanager
def stage_log(directory: str):
    """Also write the "fastreid" log to ``<directory>/log.txt`` while a stage runs."""
    handler = None
    if comm.is_main_process():
        os.makedirs(directory, exist_ok=True)
        handler = logging.FileHandler(os.path.join(directory, "log.txt"))
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s"))
        logging.getLogger("fastreid").addHandler(handler)
    try:
        yield
    finally:
        if handler is not None:
            logging.getLogger("fastreid").removeHandler(handler)
            handler.close()


def read_done(directory: str) -> Optional[Dict]:
    """The record of a completed stage folder, or None when the stage is not complete. An unreadable record (a kill
    while an older version wrote it) counts as "not complete", with a warning naming the file."""
    path = os.path.join(directory, DONE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        if not isinstance(record, dict) or "metrics" not in record:
            raise ValueError("no 'metrics' in it")
        return record
    except (ValueError, UnicodeDecodeError) as err:  # json.JSONDecodeError is a ValueError
        logger.warning(f"{path} is unreadable ({type(err).__name__}: {err}): the stage counts as not done and runs "
                       f"again (resuming from its last checkpoint if it has one)")
        return None


def repair_last_checkpoint(directory: str) -> None:
    """fast-reid's ``last_checkpoint`` names the checkpoint to resume from; a kill while it was written leaves it
    empty (fast-reid then fails with "Checkpoint <dir>/ not found!"). Point it at the newest ``model_*.pth`` of
    the folder, or remove it when there is none (the stage then starts over), with a warning naming the file."""
    marker = os.path.join(directory, "last_checkpoint")
    if not os.path.isfile(marker):
        return
    with open(marker) as f:
        name = f.read().strip()
    if name and os.path.isfile(os.path.join(directory, name)):
        return
    found = sorted((p for p in os.listdir(directory) if p.startswith("model_") and p.endswith(".pth")),
                   key=lambda p: os.path.getmtime(os.path.join(directory, p)))
    if comm.is_main_process():
        if found:
            logger.warning(f"{marker} names {name!r}, which does not exist: resuming from {found[-1]} instead")
            tmp = marker + ".tmp"
            with open(tmp, "w") as f:
                f.write(found[-1])
            os.replace(tmp, marker)
        else:
            logger.warning(f"{marker} names {name!r}, which does not exist, and the folder has no checkpoint: "
                           f"the stage starts over")
            os.remove(marker)
    comm.synchronize()


def write_done(directory: str, record: Dict) -> None:
    """Mark ``directory`` complete (rank 0; written to a temp file then renamed, so a kill never leaves half)."""
    if comm.is_main_process():
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, DONE_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(record, f, indent=2)
        os.replace(tmp, os.path.join(directory, DONE_FILE))
    comm.synchronize()


def run_stage(title: str, cfg, trainer_cls, *,
              after_final_checkpoint: Optional[Callable[[object], None]] = None) -> Dict[str, float]:
    """Train one stage in ``cfg.OUTPUT_DIR`` unless its ``done.json`` exists; returns its test metrics.

    ``after_final_checkpoint(trainer)`` runs when a stage was killed after its last checkpoint but before
    ``done.json``: the final model is then evaluated again and the hook redoes what ``train()`` does after training
    (e.g. exporting an adapter).

    Seeding (``PLUGINS.SEED >= 0``): every RNG is seeded from ``(PLUGINS.SEED, title)`` before the trainer is built,
    and a fast-reid trainer gets an ``EpochSeedHook`` (every epoch from ``(stage seed, epoch)``): the stage does not
    depend on what ran before it in the process, nor on whether it resumes. ``title`` must therefore be unique within
    a pipeline and the same from run to run (it is also the ``stage`` of ``done.json``)."""
    done = read_done(cfg.OUTPUT_DIR)
    if done is not None:
        logger.info(f"{title}: complete in {cfg.OUTPUT_DIR}, skipped")
        return done["metrics"]
    repair_last_checkpoint(cfg.OUTPUT_DIR)
    resuming = os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    logger.info(f"{title}: {'resuming' if resuming else 'training'} in {cfg.OUTPUT_DIR}")
    with stage_log(cfg.OUTPUT_DIR):
        stage_seed = seed_stage(cfg, title)  # before the trainer draws anything (model init, loaders, samplers)
        trainer = trainer_cls(cfg)
        install_epoch_seeding(trainer, stage_seed)
        trainer.resume_or_load(resume=True)
        if trainer.start_epoch < trainer.max_epoch:
            results = trainer.train()
        else:  # killed after the last checkpoint but before done.json: evaluate the final model again
            results = trainer.test(cfg, trainer.model)
            if after_final_checkpoint is not None:
                after_final_checkpoint(trainer)
        metrics = from_main(metrics_of(results, title) if comm.is_main_process() else None)
    write_done(cfg.OUTPUT_DIR, {"stage": title, "metrics": metrics})
    del trainer
    gc.collect()
    return metrics
