"""``SynthRGBNT201``: the procedural RGBNT201 layout read by the real RGBNT201 reader, and DeMo's batches through
the project's loader helper (``modalities`` keyed RGB / NI / TI, raw 0-255; independent or synchronised
augmentation per modality)."""
from __future__ import annotations

import os

import pytest
import torch

from plugins.config import import_methods, setup_cfg
from plugins.data.batch import validate_batch
from plugins.data.datasets.synthetic_multimodal import SynthRGBNT201
from plugins.data.synthetic import SynthConfig
from plugins.data.mapper import build_extras_dataset
from plugins.engine.loaders import make_train_loader

import_methods()
TINY = SynthConfig(train_ids=4, test_ids=3, images_per_id=4, num_cameras=4, height=64, width=32)


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    return SynthRGBNT201(root=str(tmp_path_factory.mktemp("mm")), config=TINY)


def test_tree_and_items(reader):
    assert os.path.isdir(os.path.join(reader.dataset_dir, "train_171", "NI"))
    assert len(reader.train) == 16 and len(reader.query) == len(reader.gallery) == 12
    assert reader.query == reader.gallery  # RGBNT201: the test folder is query and gallery
    path, pid, camid, extras = reader.train[0]
    assert str(pid).startswith("synthrgbnt201_") and str(camid).startswith("synthrgbnt201_")
    assert set(extras["modalities"]) == {"RGB", "NI", "TI"}
    assert all(os.path.basename(p) == os.path.basename(path) for p in extras["modalities"].values())
    assert {it[2] for it in reader.query} <= {0, 1, 2, 3}


def _cfg(sync: bool):
    return setup_cfg("", ["INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]", "INPUT.FLIP.ENABLED", "True",
                          "INPUT.REA.ENABLED", "True", "INPUT.REA.PROB", "1.0", "DATALOADER.NUM_WORKERS", "0",
                          "PLUGINS.DATA.MODALITIES", '["RGB", "NI", "TI"]', "SOLVER.IMS_PER_BATCH", "8",
                          "DATALOADER.NUM_INSTANCE", "2", "DATALOADER.SAMPLER_TRAIN", "NaiveIdentitySampler",
                          "PLUGINS.DATA.SYNC_MODALITY_TRANSFORMS", str(sync)])


def test_identity_sampled_multimodal_batches(reader):
    torch.manual_seed(0)
    batch = next(iter(make_train_loader(_cfg(False), reader.train)))
    validate_batch(batch, required=("images", "targets", "camids", "modalities"))
    assert set(batch["modalities"]) == {"RGB", "NI", "TI"} and batch["modalities"]["NI"].shape == (8, 3, 64, 32)
    assert float(batch["modalities"]["TI"].max()) > 1.5  # raw 0-255, not normalised
    counts = torch.bincount(batch["targets"])
    assert set(counts[counts > 0].tolist()) == {2}  # P x K = 4 ids x 2


def test_sync_option_reaches_the_dataset(reader):
    """The official code draws each modality's augmentation independently (the configs' default); the option
    draws them once per sample (the mechanism is tested in tests/data/test_extras_dataset.py)."""
    for sync in (True, False):
        ds = build_extras_dataset(_cfg(sync), [reader.train[0]], is_train=True, relabel=True)
        assert ds.sync_modalities is sync and ds.modality_names == ("RGB", "NI", "TI")
