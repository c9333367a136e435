"""Shared pieces of the plugin dataset readers.

Item contract (additive over fast-reid's): every item is ``(img_path, pid, camid)`` or
``(img_path, pid, camid, extras)`` where ``extras`` is a dict (attributes, captions, modality paths, scene...).
fast-reid's consumers only read ``item[0]``, ``item[1]`` and ``item[2]`` (``CommDataset``,
``ImageDataset.parse_data``, the samplers), so the 4th element travels along unseen by them.
Training pids/camids are strings prefixed with the reader's ``dataset_name`` (as fast-reid's own readers do) so
``DATASETS.NAMES`` can concatenate datasets without id collisions; query/gallery pids/camids stay integers.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Iterable, Sequence

from fastreid.data.datasets.bases import ImageDataset

Item = tuple  # (img_path, pid, camid) or (img_path, pid, camid, extras: dict)


def require_dir(path: str, what: str) -> str:
    """Fail fast with a message naming the missing folder and what it should hold."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what}: folder '{path}' not found")
    return path


def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: file '{path}' not found")
    return path


def first_existing(candidates: Sequence[str], what: str) -> str:
    """Return the first existing file among ``candidates``; the error lists every path tried."""
    for path in candidates:
        if os.path.isfile(path):
            return path
    tried = ", ".join(f"'{p}'" for p in candidates)
    raise FileNotFoundError(f"{what} not found; looked for {tried}")


def train_label(dataset_name: str, value: Any) -> str:
    """fast-reid's training-label convention: ``<dataset_name>_<value>``."""
    return f"{dataset_name}_{value}"


class ExtendedImageDataset(ImageDataset):
    """fast-reid ``ImageDataset`` whose items may carry a 4th ``extras`` dict.

    fast-reid's ``combine_all`` unpacks items as 3-tuples; this override keeps the extras. Everything else
    (lazy splits, ``show_train``/``show_test``, ``parse_data``) is fast-reid's.
    """

    dataset_name = "unknown"

    def combine_all(self) -> None:
        combined = copy.deepcopy(self.train)

        def _add(data: Iterable[Item]) -> None:
            for item in data:
                img_path, pid, camid = item[0], item[1], item[2]
                if pid in self._junk_pids:
                    continue
                new = (img_path, f"{self.dataset_name}_test_{pid}", f"{self.dataset_name}_test_{camid}")
                combined.append(new + tuple(item[3:]))

        _add(self.query)
        _add(self.gallery)
        self._train = combined
