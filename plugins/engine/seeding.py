"""Seeds of a run with ``PLUGINS.SEED >= 0``: every stage, every evaluation row and every training epoch starts from a
state derived from the run's seed, so a run killed and resumed ends with the same numbers as an uninterrupted one.

==========================  ============================================================================================
``derive_seed(seed, *key)``  a stable 31-bit seed from the run's seed and a key (sha256, not Python's salted ``hash``)
``seed_all(seed)``           python ``random``, ``numpy.random``, torch (CPU and every CUDA device) from one seed
``seed_stage(cfg, key)``     seed every RNG from ``derive_seed(PLUGINS.SEED, key)`` (+ the process rank) and return
                             that stage seed; ``None`` (nothing seeded) when ``PLUGINS.SEED < 0``
``EpochSeedHook``            fast-reid hook, first in the trainer's list: before every epoch it seeds every RNG from
                             ``(stage seed, "epoch", epoch)`` (+ rank); before the epoch's first step it restarts the
                             train loader with the sampler seed ``(stage seed, "sampler", epoch)`` unless a hook
                             already replaced the loader in this epoch (e.g. pseudo-labelling, whose new sampler seed
                             is then drawn from the freshly seeded numpy RNG)
``install_epoch_seeding``    put an ``EpochSeedHook`` in front of a fast-reid trainer's hooks (other trainers: no-op)
==========================  ============================================================================================

``plugins.engine.stages.run_stage`` seeds each stage from its title before the trainer builds its model and loaders and
installs the epoch hook; ``tools/train_net.py`` seeds the process (``PLUGINS.SEED`` + rank) and installs the epoch
hook on a single trainer with the run's seed as stage seed; pipelines seed rows they measure outside stages.

Why re-seeding per epoch needs nothing new in the checkpoint: fast-reid resumes at an epoch boundary from
``model_XXXX.pth`` (model, optimizer, LR scheduler, epoch). Everything random an epoch does (batch order, identity
sampling, augmentations, dropout, pseudo-label loaders) is a function of the RNG state at its start and of that
checkpointed state; fast-reid's infinite train loader would otherwise carry its position from one epoch to the next,
which is why it is restarted at every epoch from a seed derived from the epoch. The price: the infinite sampler's
stream starts anew each epoch (a fresh permutation / identity draw per epoch) instead of flowing across epochs.

What repeats exactly (same machine, library versions, world size and config):
  - a stage whose earlier stages were skipped (done.json) or ran in another process;
  - an epoch resumed from the previous epoch's checkpoint, including multi-worker data loading on CPU (workers get
    their seeds from torch's RNG when the loader restarts, and batches arrive in order);
  - the SAGE pipeline's evaluation rows (static merges with BatchNorm re-estimation, LoRAHub's search).
What does not:
  - steps of an epoch interrupted by a kill are redone (identically: the epoch restarts from its beginning);
  - CUDA: cuDNN autotuning (``CUDNN_BENCHMARK``) and kernels with atomics are not bitwise repeatable; fast-reid's
    ``DataLoaderX`` prefetches in a background thread, so with ``DATALOADER.NUM_WORKERS 0`` augmentations draw
    from the global RNGs concurrently with the training thread (use workers for repeatable GPU runs);
  - state a trainer or hook keeps in memory across epochs and fast-reid does not checkpoint: the pseudo-label hook
    with ``PERIOD > 1`` (a resumed stage re-clusters at its first epoch) or ``EPS_MODE rho`` (eps is re-estimated
    then); the shipped configs use ``PERIOD 1`` and a fixed eps;
  - another world size (every rank seeds with its rank added) or another ``PLUGINS.SEED``;
  - ``PLUGINS.SEED < 0``: fast-reid's behaviour, nothing here is applied.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Optional

from fastreid.engine.train_loop import HookBase, TrainerBase
from fastreid.utils import comm
from fastreid.utils.env import seed_all_rng

__all__ = ["derive_seed", "seed_all", "seed_stage", "EpochSeedHook", "install_epoch_seeding", "restart_train_loader"]

logger = logging.getLogger("fastreid." + __name__)

_SEED_RANGE = 2 ** 31  # + a rank stays below numpy's 2 ** 32 limit


def derive_seed(seed: int, *key) -> int:
    """A seed in [0, 2**31) from ``seed`` and ``key`` (strings / ints), the same in every process and Python run."""
    text = "\x1f".join([str(int(seed))] + [str(k) for k in key])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % _SEED_RANGE


def seed_all(seed: int) -> None:
    """Seed python ``random``, ``numpy.random`` and torch (CPU, CUDA) with ``seed`` (fast-reid's ``seed_all_rng``)."""
    seed_all_rng(int(seed))


def seed_stage(cfg, key: str) -> Optional[int]:
    """Seed every RNG of this process from ``derive_seed(cfg.PLUGINS.SEED, key)`` + rank and return that stage seed
    (the same on every rank); ``None`` and nothing seeded when ``PLUGINS.SEED < 0``. Call it before anything of the
    stage draws random numbers (model init, loaders)."""
    if int(cfg.PLUGINS.SEED) < 0:
        return None
    stage_seed = derive_seed(cfg.PLUGINS.SEED, key)
    seed_all(stage_seed + comm.get_rank())
    return stage_seed


def restart_train_loader(trainer, sampler_seed: Optional[int] = None) -> None:
    """Give ``trainer`` (fast-reid ``DefaultTrainer``) a fresh iterator over its train loader; ``sampler_seed``
    replaces the seed of a fast-reid sampler (``_seed``, read when its infinite stream starts). The old iterator's
    workers / prefetch thread are stopped first."""
    inner = trainer._trainer  # SimpleTrainer / AMPTrainer: owns data_loader and its iterator
    loader = inner.data_loader
    sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    if sampler_seed is not None and hasattr(sampler, "_seed"):
        sampler._seed = int(sampler_seed)
    old = inner._data_loader_iter
    if old is loader and hasattr(loader, "shutdown"):  # fast-reid DataLoaderX is its own iterator (prefetch thread)
        loader.shutdown()
    elif hasattr(old, "_shutdown_workers"):  # torch DataLoader iterator with worker processes
        old._shutdown_workers()
    inner._data_loader_iter = iter(loader)


class EpochSeedHook(HookBase):
    """Every epoch starts from RNG states and a train-loader position derived from ``(stage_seed, epoch)`` (see the
    module docstring). Must run before every other hook's ``before_epoch`` (``install_epoch_seeding`` puts it
    first)."""

    def __init__(self, stage_seed: int):
        self.stage_seed = int(stage_seed)
        self._loader = None
        self._restart_pending = False

    def before_epoch(self):
        epoch = int(self.trainer.epoch)
        seed_all(derive_seed(self.stage_seed, "epoch", epoch) + comm.get_rank())
        self._loader = getattr(self.trainer._trainer, "data_loader", None)
        self._restart_pending = self._loader is not None  # a loop without fast-reid's loader: RNGs only

    def before_step(self):
        if not self._restart_pending:
            return
        self._restart_pending = False
        if getattr(self.trainer._trainer, "data_loader", None) is self._loader:  # not replaced since the epoch began
            restart_train_loader(self.trainer, derive_seed(self.stage_seed, "sampler", int(self.trainer.epoch)))
        self._loader = None


def install_epoch_seeding(trainer, stage_seed: Optional[int]) -> bool:
    """Put an ``EpochSeedHook(stage_seed)`` first among a fast-reid trainer's hooks; returns whether it did (no-op for
    ``stage_seed=None`` and for trainers that are not fast-reid ``TrainerBase`` loops, e.g. pipelines or trainers
    with their own loop, which seed their epochs themselves)."""
    if stage_seed is None or not isinstance(trainer, TrainerBase) or not hasattr(trainer, "_trainer"):
        return False
    hook = EpochSeedHook(stage_seed)
    trainer.register_hooks([hook])  # sets hook.trainer (a weak proxy)
    trainer._hooks.remove(hook)
    trainer._hooks.insert(0, hook)
    return True
