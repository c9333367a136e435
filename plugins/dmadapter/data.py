"""Text-image data for DM-Adapter through fast-reid's loaders.

- ``CaptionTokens``: every caption of a dataset tokenised ONCE (open_clip's tokenizer, context 77, long captions
  cut and still ending with <end>), then looked up per item: the ``tokenize`` of ``ExtrasDataset``.
- ``build_train_set``: the reader's (image, caption) items -> ``ExtrasDataset`` with ``text_tokens``.
- ``CaptionQueries``: the query captions of an evaluation split as text-only items (no image read).
- ``TextImageTestLoader``: captions first, then the gallery images, batched apart (a batch never mixes them), for
  fast-reid's ``inference_on_dataset`` with ``plugins.evaluation.text_image.TextImageEvaluator``.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Sequence

import torch
from fastreid.data.build import build_reid_test_loader
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.transforms import build_transforms
from torch.utils.data import Dataset

from ..data.mapper import ExtrasDataset, clip_tokenizer

__all__ = ["CaptionTokens", "build_train_set", "CaptionQueries", "TextImageTestLoader", "text_reader"]


def _caption(item) -> str:
    extras = item[3] if len(item) > 3 and isinstance(item[3], dict) else {}
    if isinstance(extras.get("caption"), str):
        return extras["caption"]
    raise ValueError(f"item '{item[0]}' carries no extras['caption'] (a text-retrieval reader's item)")


class CaptionTokens:
    """``list[str] -> (n, L)`` int64 from a table built once over ``captions`` (unknown captions are tokenised on
    the fly)."""

    def __init__(self, captions: Iterable[str], context_length: int = 77):
        self.tokenize = clip_tokenizer(context_length)
        unique = sorted(set(captions))
        self.index: Dict[str, int] = {c: i for i, c in enumerate(unique)}
        self.table = self.tokenize(unique).to(torch.int32) if unique else torch.zeros(0, context_length,
                                                                                     dtype=torch.int32)

    def __len__(self) -> int:
        return len(self.index)

    def __call__(self, texts: List[str]) -> torch.Tensor:
        rows = [self.index.get(t) for t in texts]
        if any(r is None for r in rows):
            return self.tokenize(list(texts))
        return self.table[torch.as_tensor(rows)].long()


def text_reader(name: str, split: str = "test"):
    """The registered text reader ``name`` under $FASTREID_DATASETS with ``split`` as its query/gallery."""
    root = os.getenv("FASTREID_DATASETS", "datasets")
    cls = DATASET_REGISTRY.get(name)
    try:
        return cls(root=root, eval_split=split)
    except TypeError as err:
        raise TypeError(f"DATASETS entry {name!r} is not a text-retrieval reader (no eval_split): {err}") from None


def build_train_set(cfg, items: Sequence[tuple]) -> ExtrasDataset:
    """Training (image, caption) items -> ExtrasDataset (train transforms, ids relabelled, ``text_tokens``)."""
    tokens = CaptionTokens((_caption(it) for it in items), int(cfg.PLUGINS.DATA.TEXT_CONTEXT_LENGTH))
    return ExtrasDataset(list(items), build_transforms(cfg, is_train=True), relabel=True, modalities=(),
                         tokenize=tokens, caption_pick="first", attributes=False)


class CaptionQueries(Dataset):
    """Query caption items -> ``{"text_tokens" (L,), "targets", "camids", "img_paths"}``; no image is read."""

    def __init__(self, items: Sequence[tuple], context_length: int = 77):
        self.items = list(items)
        self.tokens = CaptionTokens((_caption(it) for it in self.items), context_length)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        return {"text_tokens": self.tokens([_caption(item)])[0], "targets": int(item[1]), "camids": int(item[2]),
                "img_paths": item[0]}


class TextImageTestLoader:
    """Caption batches, then image batches (fast-reid test loaders, sharded by rank). ``dataset`` / ``len`` as
    ``inference_on_dataset`` reads them."""

    def __init__(self, cfg, query: Sequence[tuple], gallery: Sequence[tuple]):
        workers = int(cfg.DATALOADER.NUM_WORKERS)
        self.queries = CaptionQueries(query, int(cfg.PLUGINS.DATA.TEXT_CONTEXT_LENGTH))
        self.images = ExtrasDataset(list(gallery), build_transforms(cfg, is_train=False), relabel=False,
                                    modalities=(), tokenize=None, attributes=False)
        text_batch = int(cfg.DMADAPTER.TEXT_BATCH) or int(cfg.TEST.IMS_PER_BATCH)
        self.loaders = [build_reid_test_loader(test_set=self.queries, test_batch_size=text_batch, num_query=0,
                                               num_workers=workers)[0],
                        build_reid_test_loader(test_set=self.images, test_batch_size=int(cfg.TEST.IMS_PER_BATCH),
                                               num_query=0, num_workers=workers)[0]]
        self.dataset = torch.utils.data.ConcatDataset([self.queries, self.images])

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders)

    def __iter__(self):
        for loader in self.loaders:
            yield from loader

