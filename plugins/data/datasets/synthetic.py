"""Synthetic multi-domain ReID datasets (``SynthReIDA`` .. ``SynthReIDD``), Market-1501 layout.

Source: ``plugins.data.synthetic`` (procedural, deterministic). Expected tree, generated on first use::

    $FASTREID_DATASETS/synthreid/<A|B|C|D>/
        bounding_box_train/PPPP_cCsS_FFFFFF_BB.jpg
        query/...            one box per test identity per camera
        bounding_box_test/...  the other test boxes + junk (-1_...) and distractors (0000_...)
        manifest.json        generator version, seed, sizes

A folder whose manifest differs from the requested generator version / seed / sizes is regenerated
(atomically: readers never see a half-written folder). Each domain has its own style, cameras and identities
(pids never overlap across domains), so training on one and testing on another measures domain shift.
"""
from __future__ import annotations

import glob
import logging
import os.path as osp
import re

from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.bases import ImageDataset

from ..synthetic import SynthConfig, generate_domain, is_current

logger = logging.getLogger("fastreid." + __name__)
_PATTERN = re.compile(r"([-\d]+)_c(\d)")

# Default size of one domain: 48 train ids x 6 boxes, 32 test ids x 6 boxes (96 query, 96 + 12 gallery);
# ~490 images at 128x64, a few seconds to generate; four domains make ~2,000 images.
DEFAULT_CONFIG = SynthConfig()


def prepare_domain(reader: str, root: str, domain: str, cfg: SynthConfig, seed: int | None,
                   formats=("market",)) -> tuple:
    """``(config, folder)`` of a procedural domain under ``<root>/synthreid/<domain>``, generated (once, atomically)
    when it is missing, stale or lacks ``formats``; ``seed`` overrides the config's. ``reader`` names the caller in
    the log."""
    if seed is not None:
        cfg = SynthConfig(**dict(cfg.to_dict(), seed=int(seed)))
    base = osp.join(root, "synthreid")
    folder = osp.join(base, domain)
    if not is_current(folder, domain, cfg, formats):
        logger.info(f"{reader}: generating synthetic domain '{domain}' ({', '.join(formats)}) into {folder} "
                    f"(seed {cfg.seed}; done once, reused afterwards)")
        generate_domain(base, domain, cfg, formats=formats, progress=True)
    return cfg, folder


class SynthReIDBase(ImageDataset):
    """Market-layout reader for one synthetic domain; generates the folder when it is missing or stale."""

    domain: str = ""
    default_config: SynthConfig = DEFAULT_CONFIG
    _junk_pids = [0, -1]

    def __init__(self, root: str = "datasets", seed: int | None = None, config: SynthConfig | None = None,
                 **kwargs):
        if not self.domain:
            raise TypeError("SynthReIDBase is abstract: use SynthReIDA / SynthReIDB / SynthReIDC / SynthReIDD")
        self.root = root
        self.dataset_name = f"synthreid{self.domain.lower()}"
        _, self.dataset_dir = prepare_domain(type(self).__name__, root, self.domain, config or self.default_config,
                                             seed)
        self.train_dir = osp.join(self.dataset_dir, "bounding_box_train")
        self.query_dir = osp.join(self.dataset_dir, "query")
        self.gallery_dir = osp.join(self.dataset_dir, "bounding_box_test")
        self.check_before_run([self.train_dir, self.query_dir, self.gallery_dir])
        train = lambda: self.process_dir(self.train_dir, is_train=True)  # noqa: E731
        query = lambda: self.process_dir(self.query_dir, is_train=False)  # noqa: E731
        gallery = lambda: self.process_dir(self.gallery_dir, is_train=False)  # noqa: E731
        super().__init__(train, query, gallery, **kwargs)

    def process_dir(self, dir_path: str, is_train: bool = True):
        """(img_path, pid, camid) for every ``*.jpg``; junk (-1) boxes are dropped as in Market-1501."""
        data = []
        for img_path in sorted(glob.glob(osp.join(dir_path, "*.jpg"))):
            m = _PATTERN.search(osp.basename(img_path))
            if m is None:
                raise ValueError(f"{img_path}: file name does not match the Market-1501 pattern PPPP_cC...")
            pid, camid = map(int, m.groups())
            if pid == -1:
                continue
            if not (0 <= pid <= 9999 and 1 <= camid <= 9):
                raise ValueError(f"{img_path}: pid {pid} / camera {camid} out of range (0-9999 / 1-9)")
            camid -= 1
            if is_train:
                pid, camid = f"{self.dataset_name}_{pid}", f"{self.dataset_name}_{camid}"
            data.append((img_path, pid, camid))
        return data


@DATASET_REGISTRY.register()
class SynthReIDA(SynthReIDBase):
    """Domain A: sunny street, sharp, neutral colours, tight boxes."""
    domain = "A"


@DATASET_REGISTRY.register()
class SynthReIDB(SynthReIDBase):
    """Domain B: indoor mall, warm cast, low contrast, smaller people, some occlusion."""
    domain = "B"


@DATASET_REGISTRY.register()
class SynthReIDC(SynthReIDBase):
    """Domain C: overcast park, cold cast, desaturated, low resolution, cut boxes."""
    domain = "C"


@DATASET_REGISTRY.register()
class SynthReIDD(SynthReIDBase):
    """Domain D: night CCTV, dark, noisy, loose boxes."""
    domain = "D"


@DATASET_REGISTRY.register()
class SynthReIDPretrain(SynthReIDBase):
    """Domain P: a generic pre-training domain (a style drawn from broad ranges, 160 train identities). It stands in
    for ImageNet-style pre-training in CPU demos: source models fine-tuned from one shared initialisation can be
    weight-averaged, as methods that merge fine-tuned models assume."""
    domain = "P"
    default_config = SynthConfig(train_ids=160, test_ids=16)
