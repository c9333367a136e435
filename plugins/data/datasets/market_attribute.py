"""Market-1501 with the Market-1501-attribute annotations (27 identity-level attributes).

Reference: Lin et al., "Improving person re-identification by attribute and identity learning", Pattern
Recognition 2019. Annotations: https://github.com/vana77/Market-1501_Attribute (``market_attribute.mat``).

Expected tree (images exactly as fast-reid's ``Market1501`` reads them)::

    $FASTREID_DATASETS/Market-1501-v15.09.15/
        bounding_box_train/  query/  bounding_box_test/     0002_c1s1_000451_03.jpg ...
        market_attribute.mat        (or $FASTREID_DATASETS/Market-1501_Attribute/market_attribute.mat)

Items: ``(img_path, pid, camid, {"attributes": tuple of 27 ints})`` in ``attribute_specs`` order; values are
0-based (see ``attribute_base``). Train images use the ``train`` annotations (751 ids), query/gallery the
``test`` ones (750 ids). Distractors (``0000``) and junk (``-1``) have no attributes: see the ``distractors`` /
``junk`` policies of ``AttributeReIDDataset`` (defaults keep fast-reid's Market evaluation unchanged).
"""
from __future__ import annotations

import os.path as osp

from fastreid.data.datasets import DATASET_REGISTRY

from .attribute_base import DUAL_STATE, MULTICLASS, SINGLE_STATE, AttributeReIDDataset, AttributeSpec, colour_specs
from .base import first_existing

MARKET_ATTRIBUTES: tuple[AttributeSpec, ...] = (
    AttributeSpec("gender", ("male", "female"), DUAL_STATE, "gender"),
    AttributeSpec("hair", ("short", "long"), DUAL_STATE, "hair"),
    AttributeSpec("up", ("long_sleeve", "short_sleeve"), DUAL_STATE, "up"),
    AttributeSpec("down", ("long_lower", "short_lower"), DUAL_STATE, "down"),
    AttributeSpec("clothes", ("dress", "pants"), DUAL_STATE, "clothes"),
    AttributeSpec("hat", ("no", "yes"), SINGLE_STATE, "hat"),
    AttributeSpec("backpack", ("no", "yes"), SINGLE_STATE, "backpack"),
    AttributeSpec("bag", ("no", "yes"), SINGLE_STATE, "bag"),
    AttributeSpec("handbag", ("no", "yes"), SINGLE_STATE, "handbag"),
    AttributeSpec("age", ("young", "teenager", "adult", "old"), MULTICLASS, "age"),
) + colour_specs("up", ("black", "white", "red", "purple", "yellow", "gray", "blue", "green"), "upper_colour") \
  + colour_specs("down", ("black", "white", "pink", "purple", "yellow", "gray", "blue", "green", "brown"),
                 "lower_colour")


@DATASET_REGISTRY.register()
class Market1501Attribute(AttributeReIDDataset):
    """Market-1501 images + Market-1501-attribute; 6 cameras; pid 0 = distractor, -1 = junk."""

    dataset_name = "market1501attr"
    attribute_specs = MARKET_ATTRIBUTES
    mat_struct = "market_attribute"
    num_cameras = 6
    distractor_pid = 0
    junk_pid = -1
    _junk_pids = [0, -1]

    def __init__(self, root: str = "datasets", attribute_file: str | None = None, **kwargs):
        self.root = root
        data_dir = osp.join(root, "Market-1501-v15.09.15")
        self.data_dir = data_dir if osp.isdir(data_dir) else root  # fast-reid's alternative layout
        mat_path = attribute_file or first_existing(
            [osp.join(self.data_dir, "market_attribute.mat"),
             osp.join(root, "Market-1501_Attribute", "market_attribute.mat")],
            "Market-1501 attribute file market_attribute.mat")
        super().__init__(osp.join(self.data_dir, "bounding_box_train"), osp.join(self.data_dir, "query"),
                         osp.join(self.data_dir, "bounding_box_test"), mat_path, **kwargs)
