"""Synthetic domains with their Market-1501-attribute annotations (``SynthReIDAttrA`` .. ``SynthReIDAttrD``).

The generator draws every identity from the 27 Market-1501 attributes plus fine detail
(``plugins.data.synthetic.identity``) and writes them as ``market_attribute.mat`` (format "market_attribute"), so
these readers are ``Market1501Attribute`` on a generated domain folder: same items, same ``attribute_specs``,
same distractor / junk policies. The images are those of ``SynthReIDA`` .. ``D`` (same seed and sizes).

    $FASTREID_DATASETS/synthreid/<A|B|C|D>/
        bounding_box_train/ query/ bounding_box_test/ market_attribute.mat manifest.json
"""
from __future__ import annotations

import os.path as osp

from fastreid.data.datasets import DATASET_REGISTRY

from ..synthetic import SynthConfig
from .attribute_base import AttributeReIDDataset
from .market_attribute import MARKET_ATTRIBUTES
from .synthetic import DEFAULT_CONFIG, SynthReIDA, SynthReIDB, SynthReIDC, SynthReIDD, prepare_domain

FORMATS = ("market", "market_attribute")


class SynthReIDAttrBase(AttributeReIDDataset):
    """One generated domain read with its attributes; generates the folder when missing or stale."""

    domain = ""
    default_config: SynthConfig = DEFAULT_CONFIG  # the same sizes as SynthReIDA .. D
    attribute_specs = MARKET_ATTRIBUTES
    mat_struct = "market_attribute"
    distractor_pid = 0
    junk_pid = -1
    _junk_pids = [0, -1]

    def __init__(self, root: str = "datasets", seed: int | None = None, config: SynthConfig | None = None,
                 **kwargs):
        if not self.domain:
            raise TypeError("SynthReIDAttrBase is abstract: use SynthReIDAttrA .. SynthReIDAttrD")
        self.root = root
        self.dataset_name = f"synthreidattr{self.domain.lower()}"
        cfg, self.dataset_dir = prepare_domain(type(self).__name__, root, self.domain,
                                               config or self.default_config, seed, FORMATS)
        self.num_cameras = cfg.num_cameras
        super().__init__(osp.join(self.dataset_dir, "bounding_box_train"), osp.join(self.dataset_dir, "query"),
                         osp.join(self.dataset_dir, "bounding_box_test"),
                         osp.join(self.dataset_dir, "market_attribute.mat"), **kwargs)


def _attribute_reader(plain: type) -> type:
    """``SynthReIDAttr<D>`` for the image reader ``SynthReID<D>``: same domain, same generated images."""
    cls = type(f"SynthReIDAttr{plain.domain}", (SynthReIDAttrBase,),
               {"domain": plain.domain, "__module__": __name__,
                "__doc__": f"{plain.__doc__.rstrip('.')}, read with its Market-1501 attributes."})
    DATASET_REGISTRY.register(cls)  # (fast-reid's register returns None when called, not as a decorator)
    return cls


# registered here, one per procedural domain
SynthReIDAttrA = _attribute_reader(SynthReIDA)
SynthReIDAttrB = _attribute_reader(SynthReIDB)
SynthReIDAttrC = _attribute_reader(SynthReIDC)
SynthReIDAttrD = _attribute_reader(SynthReIDD)
