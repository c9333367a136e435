"""RGBNT201 / RGBNT100 / MSVR310 readers on trees built in tmp dirs with the datasets' exact naming."""
import os

import numpy as np
import pytest
from PIL import Image

from fastreid.data.common import CommDataset
from fastreid.data.datasets import DATASET_REGISTRY
from plugins.data.datasets.msvr310 import MSVR310, parse_msvr310_name
from plugins.data.datasets.multimodal_base import MODALITIES, load_modalities
from plugins.data.datasets.rgbnt100 import RGBNT100
from plugins.data.datasets.rgbnt201 import RGBNT201, parse_rgbnt201_name

COLOURS = {"RGB": (200, 10, 10), "NI": (10, 200, 10), "TI": (10, 10, 200)}


def _close(img, colour):
    """JPEG round-trips a flat colour within a few levels (8 px margins: chroma bleeds across tile edges)."""
    arr = np.asarray(img, np.int16)
    m = min(8, arr.shape[0] // 4, arr.shape[1] // 4)
    return np.abs(arr[m:arr.shape[0] - m, m:arr.shape[1] - m] - colour).max() <= 3


def _img(path, size=(16, 32), color=(0, 0, 0)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path, quality=100)


def _rgbnt201(root, train=("000001_cam1_0_00.jpg", "000001_cam3_0_01.jpg", "000002_cam4_1_00.jpg"),
              test=("000172_cam2_0_00.jpg", "000172_cam3_0_00.jpg")):
    for split, names in (("train_171", train), ("test", test)):
        for n in names:
            for m in MODALITIES:
                _img(str(root / "RGBNT201" / split / m / n), color=COLOURS[m])


def test_registered():
    for name, cls in (("RGBNT201", RGBNT201), ("RGBNT100", RGBNT100), ("MSVR310", MSVR310)):
        assert DATASET_REGISTRY.get(name) is cls


def test_rgbnt201(tmp_path):
    _rgbnt201(tmp_path)
    d = RGBNT201(root=str(tmp_path))
    assert parse_rgbnt201_name("000201_cam4_5_12.jpg") == (201, 3)
    assert [(it[1], it[2]) for it in d.train] == [("rgbnt201_1", "rgbnt201_0"), ("rgbnt201_1", "rgbnt201_2"),
                                                  ("rgbnt201_2", "rgbnt201_3")]
    assert [(it[1], it[2]) for it in d.query] == [(172, 1), (172, 2)]
    assert [it[:3] for it in d.gallery] == [it[:3] for it in d.query]  # test = query = gallery
    path, _, _, extras = d.train[0]
    assert path == extras["modalities"]["RGB"] and path.endswith("train_171/RGB/000001_cam1_0_00.jpg")
    assert extras["modalities"]["TI"].endswith("train_171/TI/000001_cam1_0_00.jpg")
    imgs = load_modalities(extras)
    assert all(_close(imgs[m], COLOURS[m]) for m in MODALITIES)
    out = CommDataset(d.train, relabel=True)[2]
    assert (out["targets"], out["camids"]) == (1, 2)


def test_rgbnt201_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="RGBNT201"):
        RGBNT201(root=str(tmp_path))
    _rgbnt201(tmp_path)
    os.remove(tmp_path / "RGBNT201" / "test" / "NI" / "000172_cam3_0_00.jpg")
    with pytest.raises(FileNotFoundError, match=r"NI image .*test/NI/000172_cam3_0_00\.jpg"):
        RGBNT201(root=str(tmp_path))
    _img(str(tmp_path / "RGBNT201" / "test" / "NI" / "000172_cam3_0_00.jpg"))
    _img(str(tmp_path / "RGBNT201" / "test" / "RGB" / "000173_c1_0_00.jpg"))
    with pytest.raises(ValueError, match="000173_c1_0_00.jpg"):
        RGBNT201(root=str(tmp_path))
    with pytest.raises(ValueError, match="camera 5"):
        parse_rgbnt201_name("000001_cam5_0_00.jpg")


def _tiled(path):
    arr = np.zeros((128, 768, 3), np.uint8)
    for k, m in enumerate(MODALITIES):
        arr[:, 256 * k:256 * (k + 1)] = COLOURS[m]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, quality=100)


def test_rgbnt100(tmp_path):
    base = tmp_path / "RGBNT100" / "rgbir"
    for split, names in {"bounding_box_train": ["0001_c1_0001.jpg", "0001_c5_0002.jpg", "-1_c2_0003.jpg"],
                         "query": ["0051_c3_0001.jpg"],
                         "bounding_box_test": ["0051_c8_0002.jpg", "0052_c1_0001.jpg"]}.items():
        for n in names:
            _tiled(str(base / split / n))
    d = RGBNT100(root=str(tmp_path))
    assert [(it[1], it[2]) for it in d.train] == [("rgbnt100_1", "rgbnt100_0"), ("rgbnt100_1", "rgbnt100_4")]
    assert [(it[1], it[2]) for it in d.query] == [(51, 2)]
    assert [(it[1], it[2]) for it in d.gallery] == [(51, 7), (52, 0)]
    extras = d.query[0][3]
    assert extras["tiles"] == {"RGB": (0, 0, 256, 128), "NI": (256, 0, 512, 128), "TI": (512, 0, 768, 128)}
    imgs = load_modalities(extras)
    for m in MODALITIES:
        assert imgs[m].size == (256, 128)
        assert _close(imgs[m], COLOURS[m])  # one colour per tile

    _img(str(base / "query" / "0051_c3_0009.jpg"), size=(256, 128))  # not a tiled file
    d = RGBNT100(root=str(tmp_path))
    with pytest.raises(ValueError, match=r"0051_c3_0009\.jpg' is 256x128.*768x128"):
        load_modalities(d.query[1][3])
    _img(str(base / "query" / "0051_c9_0010.jpg"))
    with pytest.raises(ValueError, match="camera 9"):
        RGBNT100(root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="RGBNT100"):
        RGBNT100(root=str(tmp_path / "none"))


def _msvr(root, split, vid, names, missing=()):
    for n in names:
        for m, folder in (("RGB", "vis"), ("NI", "ni"), ("TI", "th")):
            if (n, folder) not in missing:
                _img(str(root / "MSVR310" / split / vid / folder / n), color=COLOURS[m])


def test_msvr310(tmp_path):
    assert parse_msvr310_name("0012_s017_c3_0004.jpg") == (12, 17, 3)
    _msvr(tmp_path, "bounding_box_train", "0001", ["0001_s001_c1_0001.jpg", "0001_s002_c4_0002.jpg"])
    _msvr(tmp_path, "query3", "0200", ["0200_s010_c2_0001.jpg"])
    _msvr(tmp_path, "bounding_box_test", "0200", ["0200_s010_c5_0002.jpg", "0200_s011_c2_0003.jpg"])
    d = MSVR310(root=str(tmp_path))
    assert [(it[1], it[2], it[3]["scene"]) for it in d.train] == [("msvr310_1", "msvr310_1", 1),
                                                                  ("msvr310_1", "msvr310_4", 2)]
    assert [(it[1], it[2], it[3]["scene"]) for it in d.query] == [(200, 2, 10)]
    assert [(it[1], it[2], it[3]["scene"]) for it in d.gallery] == [(200, 5, 10), (200, 2, 11)]
    mods = d.query[0][3]["modalities"]
    assert mods["NI"].endswith("query3/0200/ni/0200_s010_c2_0001.jpg")
    assert mods["TI"].endswith("query3/0200/th/0200_s010_c2_0001.jpg") and d.query[0][0] == mods["RGB"]
    imgs = load_modalities(d.query[0][3])
    assert _close(imgs["TI"], COLOURS["TI"]) and _close(imgs["RGB"], COLOURS["RGB"])


def test_msvr310_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="MSVR310"):
        MSVR310(root=str(tmp_path))
    _msvr(tmp_path, "bounding_box_train", "0001", ["0001_s001_c1_0001.jpg", "0001_s001_c2_0002.jpg"],
          missing={("0001_s001_c1_0001.jpg", "th")})
    _msvr(tmp_path, "query3", "0200", ["0200_s010_c2_0001.jpg"])
    _msvr(tmp_path, "bounding_box_test", "0200", ["0200_s010_c5_0002.jpg"])
    with pytest.raises(FileNotFoundError, match=r"TI image .*0001/th/0001_s001_c1_0001\.jpg"):
        MSVR310(root=str(tmp_path))
    _img(str(tmp_path / "MSVR310" / "bounding_box_train" / "0001" / "th" / "0001_s001_c1_0001.jpg"))
    MSVR310(root=str(tmp_path))
    os.rename(tmp_path / "MSVR310" / "query3" / "0200" / "ni", tmp_path / "MSVR310" / "query3" / "0200" / "nir")
    with pytest.raises(FileNotFoundError, match=r"NI images: folder .*query3/0200/ni"):
        MSVR310(root=str(tmp_path))
    os.rename(tmp_path / "MSVR310" / "query3" / "0200" / "nir", tmp_path / "MSVR310" / "query3" / "0200" / "ni")
    _msvr(tmp_path, "query3", "0201", ["0201_sx10_c2_0001.jpg"])
    with pytest.raises(ValueError, match="0201_sx10_c2_0001.jpg"):
        MSVR310(root=str(tmp_path))
