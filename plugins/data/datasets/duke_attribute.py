"""DukeMTMC-reID with the DukeMTMC-attribute annotations (23 identity-level attributes).

Reference: Lin et al., "Improving person re-identification by attribute and identity learning", Pattern
Recognition 2019. Annotations: https://github.com/vana77/DukeMTMC-attribute (``duke_attribute.mat``).

Expected tree (images exactly as fast-reid's ``DukeMTMC`` reads them)::

    $FASTREID_DATASETS/DukeMTMC-reID/
        bounding_box_train/  query/  bounding_box_test/     0001_c2_f0046182.jpg ...
        duke_attribute.mat          (or $FASTREID_DATASETS/DukeMTMC-attribute/duke_attribute.mat, the repo checkout)

Items: ``(img_path, pid, camid, {"attributes": tuple of 23 ints})`` in ``attribute_specs`` order (0-based).
``train`` annotations cover the 702 training ids; ``test`` the 1110 query/gallery ids, including the 408 gallery
distractor ids, so every DukeMTMC-reID image has attributes; a missing id is an error. ``top`` is not annotated
(raw 0) for train ids 0370 and 0679: their value is ``UNKNOWN`` (-1).
"""
from __future__ import annotations

import os.path as osp

from fastreid.data.datasets import DATASET_REGISTRY

from .attribute_base import DUAL_STATE, SINGLE_STATE, AttributeReIDDataset, AttributeSpec, colour_specs
from .base import first_existing, require_dir

DUKE_ATTRIBUTES: tuple[AttributeSpec, ...] = (
    AttributeSpec("gender", ("male", "female"), DUAL_STATE, "gender"),
    AttributeSpec("top", ("short_upper", "long_upper"), DUAL_STATE, "top"),
    AttributeSpec("boots", ("no", "yes"), SINGLE_STATE, "boots"),
    AttributeSpec("hat", ("no", "yes"), SINGLE_STATE, "hat"),
    AttributeSpec("backpack", ("no", "yes"), SINGLE_STATE, "backpack"),
    AttributeSpec("bag", ("no", "yes"), SINGLE_STATE, "bag"),
    AttributeSpec("handbag", ("no", "yes"), SINGLE_STATE, "handbag"),
    AttributeSpec("shoes", ("dark", "light"), DUAL_STATE, "shoes"),
) + colour_specs("up", ("black", "white", "red", "purple", "gray", "blue", "green", "brown"), "upper_colour") \
  + colour_specs("down", ("black", "white", "red", "gray", "blue", "green", "brown"), "lower_colour")


@DATASET_REGISTRY.register()
class DukeMTMCAttribute(AttributeReIDDataset):
    """DukeMTMC-reID images + DukeMTMC-attribute; 8 cameras; no distractor/junk pids by design."""

    dataset_name = "dukemtmcattr"
    attribute_specs = DUKE_ATTRIBUTES
    mat_struct = "duke_attribute"
    num_cameras = 8

    def __init__(self, root: str = "datasets", attribute_file: str | None = None, **kwargs):
        self.root = root
        self.dataset_dir = require_dir(osp.join(root, "DukeMTMC-reID"), "DukeMTMCAttribute images")
        mat_path = attribute_file or first_existing(
            [osp.join(self.dataset_dir, "duke_attribute.mat"),
             osp.join(root, "DukeMTMC-attribute", "duke_attribute.mat")],
            "DukeMTMC attribute file duke_attribute.mat")
        super().__init__(osp.join(self.dataset_dir, "bounding_box_train"), osp.join(self.dataset_dir, "query"),
                         osp.join(self.dataset_dir, "bounding_box_test"), mat_path, **kwargs)
