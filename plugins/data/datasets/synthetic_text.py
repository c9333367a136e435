"""Procedural text-based person retrieval (``SynthPedesA`` .. ``SynthPedesD``): the synthetic domains written in
the CUHK-PEDES format (two generated captions per image, ``plugins.data.synthetic.captions``), read by the
CUHK-PEDES reader. The images are those of ``SynthReIDA`` .. ``D`` (same seed and sizes); the training ids form
the train split and the test ids are halved into val and test (as CUHK-PEDES has all three).

    $FASTREID_DATASETS/synthreid/<A|B|C|D>/CUHK-PEDES/{reid_raw.json, imgs/SYNTH<D>/...}
"""
from __future__ import annotations

import os.path as osp

from fastreid.data.datasets import DATASET_REGISTRY

from ..synthetic import SynthConfig
from .cuhk_pedes import CUHKPEDES
from .synthetic import DEFAULT_CONFIG, SynthReIDA, SynthReIDB, SynthReIDC, SynthReIDD, prepare_domain

FORMATS = ("cuhk_pedes",)


class SynthPedesBase(CUHKPEDES):
    """One generated domain read as CUHK-PEDES; generates the folder (or adds the format) when needed."""

    domain = ""
    default_config: SynthConfig = DEFAULT_CONFIG

    def __init__(self, root: str = "datasets", eval_split: str = "test", seed: int | None = None,
                 config: SynthConfig | None = None, **kwargs):
        if not self.domain:
            raise TypeError("SynthPedesBase is abstract: use SynthPedesA .. SynthPedesD")
        self.dataset_name = f"synthpedes{self.domain.lower()}"
        _, folder = prepare_domain(type(self).__name__, root, self.domain, config or self.default_config, seed,
                                   FORMATS)
        super().__init__(root=folder, eval_split=eval_split, **kwargs)
        self.domain_dir = osp.abspath(folder)


def _text_reader(plain: type) -> type:
    cls = type(f"SynthPedes{plain.domain}", (SynthPedesBase,),
               {"domain": plain.domain, "__module__": __name__,
                "__doc__": f"{plain.__doc__.rstrip('.')}, with generated captions (CUHK-PEDES format)."})
    DATASET_REGISTRY.register(cls)
    return cls


SynthPedesA = _text_reader(SynthReIDA)
SynthPedesB = _text_reader(SynthReIDB)
SynthPedesC = _text_reader(SynthReIDC)
SynthPedesD = _text_reader(SynthReIDD)
