"""The one loader helper: train, test and unlabelled-pool loaders, all over ``ExtrasDataset``.

Every loader reads its images with ``plugins.data.mapper.build_extras_dataset`` (fast-reid's transforms of the
config + the ``PLUGINS.DATA`` extras), so batches follow ``plugins/data/batch.py``; with the default
``PLUGINS.DATA`` they are exactly fast-reid's ``CommDataset`` batches. Items are reader items
``(img_path, pid, camid[, extras])``; pool items are ``(img_path, camid[, extras])`` (pid 0 is put in).

==============================  =============================================================================
``make_train_loader``           fast-reid's infinite train loader (``build_reid_train_loader``): sampler from
                                ``DATALOADER.SAMPLER_TRAIN`` or the one given, ``SOLVER.IMS_PER_BATCH`` over all
                                ranks, ``DATALOADER.NUM_WORKERS``, train transforms, drop_last
``make_test_loader``            fast-reid's test loader over query + gallery (``build_reid_test_loader``): every
                                item once, in order, sharded by rank; returns ``(loader, num_query)``
``make_dataset_test_loader``    ``make_test_loader`` over a registered dataset's query and gallery (extras kept)
``make_pool_loader``            feature extraction over a pool: ``make_test_loader`` without a query/gallery split
``make_pool_epoch_loader``      one shuffled pass over a pool on this process only (train transforms; torch
                                ``DataLoader``; drop_last when more than one batch); the order and the workers'
                                seeds come from torch's global RNG, so seeding it repeats the epoch exactly
``pool_batch``                  all pool items as one collated batch, on this process (no loader, no sharding)
==============================  =============================================================================

Named ``make_*`` so that they neither shadow the ``build_*_loader`` classmethods of the trainers that call them
nor look like tests to pytest.
"""
from __future__ import annotations

import os
from typing import Callable, List, Optional, Sequence, Tuple

from fastreid.data.build import build_reid_test_loader, build_reid_train_loader, fast_batch_collator
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.utils import comm
from torch.utils.data import DataLoader, Sampler

from ..data.mapper import ExtrasDataset, build_extras_dataset

__all__ = ["dataset_items", "pool_items", "make_train_loader", "make_test_loader", "make_dataset_test_loader",
           "make_pool_loader", "make_pool_epoch_loader", "pool_batch"]

SPLITS = ("train", "query", "gallery")


def _workers(cfg, num_workers: Optional[int]) -> int:
    return int(cfg.DATALOADER.NUM_WORKERS) if num_workers is None else int(num_workers)


def dataset_items(names: Sequence[str], split: str, *, show: bool = False, **reader_kwargs) -> List[tuple]:
    """Items (extras kept) of ``split`` ("train", "query" or "gallery") of the registered datasets ``names``
    under ``$FASTREID_DATASETS`` (default ``datasets``), concatenated; ``show``: print fast-reid's summary;
    ``reader_kwargs`` go to each reader (e.g. ``combineall``, as fast-reid's train loader passes it)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = os.getenv("FASTREID_DATASETS", "datasets")
    items: List[tuple] = []
    for name in names:
        data = DATASET_REGISTRY.get(name)(root=root, **reader_kwargs)
        if show and split == "train":
            data.show_train()
        elif show:
            data.show_test()
        items.extend(getattr(data, split))
    return items


def pool_items(items: Sequence[tuple]) -> List[tuple]:
    """``(img_path, camid[, extras])`` -> ``(img_path, 0, camid[, extras])``: reader items with a dummy pid."""
    return [(it[0], 0) + tuple(it[1:]) for it in items]


def make_train_loader(cfg, items: Optional[Sequence[tuple]] = None, *, sampler: Optional[Sampler] = None,
                 relabel: bool = True, transform: Optional[Callable] = None):
    """fast-reid train loader (infinite; batches of ``SOLVER.IMS_PER_BATCH`` / world size) over ``items``.

    Args:
        items: reader items; ``None``: the train items of ``DATASETS.NAMES`` (summary shown on the main process).
        sampler: a fast-reid sampler over the items; ``None``: the one ``DATALOADER.SAMPLER_TRAIN`` names.
        relabel: renumber pids and camids 0.. (``CommDataset``); ``False`` keeps them (e.g. pseudo-labels).
        transform: replaces the config's train transforms.
    """
    if items is None:
        items = dataset_items(cfg.DATASETS.NAMES, "train", show=comm.is_main_process())
    train_set = build_extras_dataset(cfg, list(items), is_train=True, relabel=relabel, transform=transform)
    return build_reid_train_loader(cfg, train_set=train_set, sampler=sampler)


def make_test_loader(cfg, query: Sequence[tuple], gallery: Sequence[tuple] = (), *, batch_size: int = 0,
                num_workers: Optional[int] = None, transform: Optional[Callable] = None) -> Tuple[DataLoader, int]:
    """fast-reid test loader over ``query + gallery`` (pids and camids as given, test transforms): every item
    once, in order; under torch.distributed each rank gets its contiguous shard (``InferenceSampler``).

    Args:
        batch_size: images per batch over all ranks; 0: ``TEST.IMS_PER_BATCH``.
        num_workers: ``None``: ``DATALOADER.NUM_WORKERS``.
    Returns:
        (loader, num_query = len(query)), as fast-reid's ``build_reid_test_loader``.
    """
    items = list(query) + list(gallery)
    test_set = build_extras_dataset(cfg, items, is_train=False, relabel=False, transform=transform)
    return build_reid_test_loader(test_set=test_set, test_batch_size=int(batch_size or cfg.TEST.IMS_PER_BATCH),
                                  num_query=len(query), num_workers=_workers(cfg, num_workers))


def make_dataset_test_loader(cfg, dataset_name: str, **kwargs) -> Tuple[DataLoader, int]:
    """``make_test_loader`` over the query and gallery of the registered dataset ``dataset_name`` (its extras
    kept); drop-in for ``DefaultTrainer.build_test_loader(cfg, dataset_name)``. ``kwargs`` go to
    ``make_test_loader`` (note: its workers default to ``DATALOADER.NUM_WORKERS``, fast-reid's to 4)."""
    root = os.getenv("FASTREID_DATASETS", "datasets")
    data = DATASET_REGISTRY.get(dataset_name)(root=root)
    if comm.is_main_process():
        data.show_test()
    return make_test_loader(cfg, data.query, data.gallery, **kwargs)


def make_pool_loader(cfg, items: Sequence[tuple], *, batch_size: int = 0, num_workers: Optional[int] = None,
                transform: Optional[Callable] = None) -> DataLoader:
    """Feature-extraction loader over pool items ``(img_path, camid[, extras])``: ``make_test_loader`` semantics
    (test transforms, every item once in order, sharded by rank; camids as given; ``batch_size`` 0:
    ``TEST.IMS_PER_BATCH``)."""
    loader, _ = make_test_loader(cfg, pool_items(items), batch_size=batch_size, num_workers=num_workers,
                            transform=transform)
    return loader


def make_pool_epoch_loader(cfg, items: Sequence[tuple], *, batch_size: int = 0, num_workers: Optional[int] = None,
                      relabel: bool = False, transform: Optional[Callable] = None) -> DataLoader:
    """One shuffled pass over pool items ``(img_path, camid[, extras])`` on this process only, with the train
    transforms: torch ``DataLoader(shuffle=True)``, ``drop_last`` when the pool holds more than one batch.

    Args:
        batch_size: 0: ``SOLVER.IMS_PER_BATCH``.
        relabel: renumber the camids 0.. in sorted order (string camids become integers); ``False`` keeps them.
    The batch order (and the workers' seeds) are drawn from torch's global RNG when iteration starts, the
    augmentations from the global python / numpy / torch RNGs: seeding them repeats the pass exactly.
    """
    size = int(batch_size or cfg.SOLVER.IMS_PER_BATCH)
    data = build_extras_dataset(cfg, pool_items(items), is_train=True, relabel=relabel, transform=transform)
    return DataLoader(data, batch_size=size, shuffle=True, drop_last=len(data) > size,
                      num_workers=_workers(cfg, num_workers), collate_fn=fast_batch_collator)


def pool_batch(cfg, items: Sequence[tuple], *, is_train: bool = False,
               transform: Optional[Callable] = None) -> dict:
    """All pool items ``(img_path, camid[, extras])`` as one collated batch (in order, camids as given), read on
    this process: no loader, no workers, no sharding. Test transforms unless ``is_train``."""
    if not items:
        raise ValueError("pool_batch needs at least one item")
    data: ExtrasDataset = build_extras_dataset(cfg, pool_items(items), is_train=is_train, relabel=False,
                                               transform=transform)
    return fast_batch_collator([data[i] for i in range(len(data))])
