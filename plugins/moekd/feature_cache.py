"""Teacher-feature cache: the frozen experts' outputs (``pooled`` (D_e,) and ``attention`` (h, w) per expert)
computed ONCE per image on the augmentation-free view (the test transforms of the config) and stored in one
safetensors file; teacher training, distillation and evaluation then read rows by image path instead of running
the foundation models every epoch (the adapters, gate, heads and student still run live).

File: ``<dir>/experts_<key>.safetensors``; tensors ``<expert>.pooled`` (N, D_e), ``<expert>.attention``
(N, h, w); metadata ``paths`` (JSON list, row order), ``key``. The key hashes every expert's weights
(``module_fingerprint``), the view's transform and the expert names: new expert weights or another input size
give another file (invalidation), never a stale hit. A file that lacks some of the requested images is
extended (only the missing ones are computed).

Exactness: for an image seen through the augmentation-free view (evaluation; teacher inputs in distillation when
the student's view is the same) the cached outputs are the outputs, bit for bit up to batch composition
(frozen, eval-mode experts). Where training augments the image (flip, pad-crop, random erasing), the experts saw
the clean view instead of the augmented one: the adapters / gate train on un-augmented expert features, and the
teacher's attention map is not flipped / shifted / erased with the student's input. That is an approximation,
the price of not rerunning the experts (set ``MOEKD.CACHE.ENABLED False`` for the exact recipe).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Dict, List, Optional, Sequence

import torch
from fastreid.data.build import fast_batch_collator
from fastreid.utils import comm
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from ..data.mapper import build_extras_dataset
from ..modeling.teachers import module_fingerprint
from .experts import ExpertOutput
from .teacher_mixture import MoETeacher

__all__ = ["ExpertCache", "cache_key", "cache_path", "ensure_cache"]

logger = logging.getLogger("fastreid." + __name__)


class ExpertCache:
    """Rows of frozen expert outputs by image path (in memory)."""

    def __init__(self, paths: Sequence[str], tensors: Dict[str, torch.Tensor], key: str = ""):
        self.paths = list(paths)
        self.index = {p: i for i, p in enumerate(self.paths)}
        self.tensors = tensors
        self.key = key
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, path: str) -> bool:
        return path in self.index

    def lookup(self, img_paths: Sequence[str], names: Sequence[str],
               device: Optional[torch.device] = None) -> Optional[Dict[str, ExpertOutput]]:
        """{expert: ExpertOutput} for the batch, or None when an image (or expert) is not cached (the caller then
        runs the experts)."""
        rows = [self.index.get(p) for p in img_paths]
        if any(r is None for r in rows) or any(f"{n}.pooled" not in self.tensors for n in names):
            self.misses += 1
            return None
        self.hits += 1
        idx = torch.tensor(rows, dtype=torch.long)
        return {n: ExpertOutput(pooled=self.tensors[f"{n}.pooled"][idx].to(device),
                                attention=self.tensors[f"{n}.attention"][idx].to(device)) for n in names}

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = path + ".tmp"
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, tmp,
                  metadata={"paths": json.dumps(self.paths), "key": self.key})
        os.replace(tmp, path)  # a kill never leaves half a cache

    @classmethod
    def load(cls, path: str, key: str) -> "ExpertCache":
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") != key:
                raise ValueError(f"{path} was computed for key {meta.get('key')!r}, not {key!r}")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return cls(json.loads(meta["paths"]), tensors, key)


def cache_key(mixture: MoETeacher, transform) -> str:
    """Hash of the experts' names and weights and the view's transform (what decides the cached values)."""
    h = hashlib.sha256()
    for n in mixture.names:
        h.update(n.encode())
        h.update(module_fingerprint(mixture.experts[n].module).encode())
    h.update(repr(transform).encode())
    return h.hexdigest()[:16]


def cache_path(directory: str, key: str) -> str:
    return os.path.join(directory, f"experts_{key}.safetensors")


@torch.no_grad()
def _compute(cfg, mixture: MoETeacher, items: List[tuple], transform, batch_size: int) -> Dict[str, torch.Tensor]:
    plain = [(it[0], 0, 0) for it in items]  # only the image matters (train and test pids differ in type)
    data = build_extras_dataset(cfg, plain, is_train=False, relabel=False, transform=transform)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=int(cfg.DATALOADER.NUM_WORKERS),
                        collate_fn=fast_batch_collator)
    parts: Dict[str, List[torch.Tensor]] = {}
    for batch in loader:
        for n, out in mixture.run_experts(batch["images"]).items():
            parts.setdefault(f"{n}.pooled", []).append(out.pooled.float().cpu())
            parts.setdefault(f"{n}.attention", []).append(out.attention.float().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def ensure_cache(cfg, mixture: MoETeacher, items: Sequence[tuple], transform, *, directory: str,
                 batch_size: int = 0) -> ExpertCache:
    """The cache of ``mixture``'s experts over ``items`` (reader tuples; the image path first) through
    ``transform`` (the augmentation-free view), read from ``directory`` when present, computed (or extended)
    and written otherwise. Every rank computes what is missing; rank 0 writes."""
    key = cache_key(mixture, transform)
    path = cache_path(directory, key)
    cache = ExpertCache([], {}, key)
    if os.path.isfile(path):
        try:
            cache = ExpertCache.load(path, key)
        except Exception as err:  # noqa: BLE001  (an unreadable cache is recomputed, said aloud)
            logger.warning(f"{path} is unreadable ({type(err).__name__}: {err}): recomputing it")
    seen, todo = set(cache.paths), []
    for it in items:
        if it[0] not in seen:
            seen.add(it[0])
            todo.append(it)
    if not todo:
        logger.info(f"expert cache: all {len(items)} images read from {path}")
        return cache
    start = time.perf_counter()
    fresh = _compute(cfg, mixture, todo, transform, int(batch_size or cfg.TEST.IMS_PER_BATCH))
    seconds = time.perf_counter() - start
    tensors = ({k: torch.cat([cache.tensors[k], fresh[k]]) for k in fresh} if cache.paths else fresh)
    cache = ExpertCache(cache.paths + [it[0] for it in todo], tensors, key)
    cache.build_seconds = seconds
    logger.info(f"expert cache: {len(todo)} images through {mixture.names} in {seconds:.1f} s -> {path}")
    if comm.is_main_process():
        cache.save(path)
    comm.synchronize()
    return cache
