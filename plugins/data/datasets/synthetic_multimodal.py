"""Procedural RGB / NIR / TIR data in the RGBNT201 layout (``SynthRGBNT201``).

The generator (``plugins.data.synthetic``, format "rgbnt201") renders every box in three spectra (RGB; NIR and TIR
as single-channel images with their own degradations) and writes the real dataset's tree; this reader is
``RGBNT201`` on that tree, generated on first use (once, atomically; regenerated when stale)::

    $FASTREID_DATASETS/synthreid/M/RGBNT201/{train_171,test}/{RGB,NI,TI}/<pid:06d>_cam<X>_<seq>_<frame>.jpg
"""
from __future__ import annotations

from fastreid.data.datasets import DATASET_REGISTRY

from ..synthetic import SynthConfig
from .rgbnt201 import RGBNT201
from .synthetic import prepare_domain

__all__ = ["SynthRGBNT201", "DEFAULT_MULTIMODAL_CONFIG"]

# 32 train ids and 24 test ids x 8 boxes over 4 cameras (RGBNT201 names hold cam1..cam4), 128x64:
# ~450 boxes x 3 spectra, a few seconds to generate.
DEFAULT_MULTIMODAL_CONFIG = SynthConfig(train_ids=32, test_ids=24, images_per_id=8, num_cameras=4)


@DATASET_REGISTRY.register()
class SynthRGBNT201(RGBNT201):
    """RGBNT201 reader on the procedural domain "M" (test split = query and gallery, as RGBNT201)."""

    dataset_name = "synthrgbnt201"
    domain = "M"
    default_config: SynthConfig = DEFAULT_MULTIMODAL_CONFIG

    def __init__(self, root: str = "datasets", seed: int | None = None, config: SynthConfig | None = None,
                 **kwargs):
        _, folder = prepare_domain(type(self).__name__, root, self.domain, config or self.default_config, seed,
                                   ("rgbnt201",))
        super().__init__(root=folder, **kwargs)
