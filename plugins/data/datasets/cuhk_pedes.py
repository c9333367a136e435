"""CUHK-PEDES: text-based person retrieval (13,003 ids; 11,003 / 1,000 / 1,000 train / val / test ids).

Reference: Li et al., "Person search with natural language description", CVPR 2017.

Expected tree::

    $FASTREID_DATASETS/CUHK-PEDES/
        reid_raw.json     [{"split", "captions" (2 per image, a few have more), "file_path" (relative to imgs/),
                            "processed_tokens", "id" (1-based)}, ...]
        imgs/CUHK01/0363004.png ...

Items: see ``text_retrieval_base`` (pids 0-based: id - 1).
"""
from fastreid.data.datasets import DATASET_REGISTRY

from .text_retrieval_base import TextRetrievalDataset


@DATASET_REGISTRY.register()
class CUHKPEDES(TextRetrievalDataset):
    dataset_name = "cuhkpedes"
    dataset_dir = "CUHK-PEDES"
    annotation_file = "reid_raw.json"
    path_key = "file_path"
    id_base = 1
    splits = ("train", "val", "test")
