"""RSTPReid: text-based person retrieval built on MSMT17 images (4,101 ids), splits train / val / test.

Reference: Zhu et al., "DSSL: deep surroundings-person separation learning for text-based person
retrieval", ACM MM 2021.

Expected tree::

    $FASTREID_DATASETS/RSTPReid/
        data_captions.json   single-line JSON list [{"id" (0-based), "img_path" (relative to imgs/; the key is
                               img_path, not file_path), "captions" (2), "split"}, ...]
        imgs/0000_c14_0031.jpg ...

Items: see ``text_retrieval_base``. The annotation is known to repeat some captions across ids; they are kept
as published (the benchmark is defined with them).
"""
from fastreid.data.datasets import DATASET_REGISTRY

from .text_retrieval_base import TextRetrievalDataset


@DATASET_REGISTRY.register()
class RSTPReid(TextRetrievalDataset):
    dataset_name = "rstpreid"
    dataset_dir = "RSTPReid"
    annotation_file = "data_captions.json"
    path_key = "img_path"
    id_base = 0
    splits = ("train", "val", "test")
