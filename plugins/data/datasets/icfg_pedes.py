"""ICFG-PEDES: text-based person retrieval built on MSMT17 images (4,102 ids), splits train / test only.

Reference: Ding et al., "Semantically self-aligned network for text-to-image part-aware person
re-identification", arXiv 2107.12666.

Expected tree::

    $FASTREID_DATASETS/ICFG-PEDES/
        ICFG-PEDES.json   [{"split", "captions" (1 per image), "file_path" (relative to imgs/),
                            "processed_tokens", "id" (0-based)}, ...]
        imgs/...

Items: see ``text_retrieval_base``. There is no val split: evaluation uses ``test``.
"""
from fastreid.data.datasets import DATASET_REGISTRY

from .text_retrieval_base import TextRetrievalDataset


@DATASET_REGISTRY.register()
class ICFGPEDES(TextRetrievalDataset):
    dataset_name = "icfgpedes"
    dataset_dir = "ICFG-PEDES"
    annotation_file = "ICFG-PEDES.json"
    path_key = "file_path"
    id_base = 0
    splits = ("train", "test")
