"""CUHK-PEDES / ICFG-PEDES / RSTPReid readers: real annotation samples, trees built in tmp dirs, errors."""
import json
import os

import pytest
from PIL import Image

from fastreid.data.common import CommDataset
from fastreid.data.datasets import DATASET_REGISTRY
from plugins.data.datasets.cuhk_pedes import CUHKPEDES
from plugins.data.datasets.icfg_pedes import ICFGPEDES
from plugins.data.datasets.rstpreid import RSTPReid
from plugins.data.datasets.text_retrieval_base import load_json_list, parse_text_records

RSTP_CAPTION0 = ("The man is wearing a grey jacket and a blue shirt.His trousers are black and his shoes are "
                 "brown.He is walking.")


def _img(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 16), (1, 2, 3)).save(path)


def _write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def test_registered():
    for name, cls in (("CUHKPEDES", CUHKPEDES), ("ICFGPEDES", ICFGPEDES), ("RSTPReid", RSTPReid)):
        assert DATASET_REGISTRY.get(name) is cls


def test_cuhk_pedes_real_sample(shared_data):
    d = CUHKPEDES(root=str(shared_data))
    assert len(d.train) == 2 and d.query == [] and d.gallery == []
    path, pid, camid, extras = d.train[0]
    assert path.endswith(os.path.join("CUHK-PEDES", "imgs", "CUHK01", "0363004.png"))
    assert (pid, camid) == ("cuhkpedes_0", "cuhkpedes_0")  # id 1 (1-based) -> pid 0
    assert extras["caption"].startswith("A pedestrian with dark hair is wearing red and white shoes")
    assert d.train[1][3]["caption"].startswith("The person has short black hair")
    assert d.train[0][3]["image_id"] == d.train[1][3]["image_id"] == 0
    out = CommDataset(d.train, relabel=True)[1]
    assert out["targets"] == 0 and isinstance(out["images"], Image.Image)


def test_cuhk_pedes_eval_split(tmp_path, shared_data):
    root = tmp_path / "r"
    os.makedirs(root / "CUHK-PEDES")
    os.symlink(shared_data / "CUHK-PEDES" / "imgs", root / "CUHK-PEDES" / "imgs")
    real = load_json_list(str(shared_data / "CUHK-PEDES" / "reid_raw.json"), "CUHK-PEDES")
    test = [{"split": "test", "captions": ["a man in black.", "black coat, red shoes."], "id": 12004,
             "file_path": "CUHK01/0363003.png", "processed_tokens": []},
            {"split": "test", "captions": ["same man again."], "id": 12004, "file_path": "CUHK01/0363004.png"},
            {"split": "val", "captions": ["someone."], "id": 11005, "file_path": "CUHK01/0363004.png"}]
    _write(str(root / "CUHK-PEDES" / "reid_raw.json"), real + test)
    d = CUHKPEDES(root=str(root))
    assert len(d.train) == 2
    # every caption is a query against every test image
    assert [(q[1], q[2], q[3]["caption"], q[3]["image_id"]) for q in d.query] == [
        (12003, -1, "a man in black.", 0), (12003, -1, "black coat, red shoes.", 0), (12003, -1, "same man again.", 1)]
    assert [(g[1], g[2], g[3]["image_id"], os.path.basename(g[0])) for g in d.gallery] == [
        (12003, 0, 0, "0363003.png"), (12003, 0, 1, "0363004.png")]
    d = CUHKPEDES(root=str(root), eval_split="val")
    assert [(q[1], q[3]["caption"]) for q in d.query] == [(11004, "someone.")] and len(d.gallery) == 1
    with pytest.raises(ValueError, match="eval_split"):
        CUHKPEDES(root=str(root), eval_split="train")


def test_rstpreid_real_record(shared_data):
    path = str(shared_data / "RSTPReid" / "data_captions.json")
    recs = parse_text_records(load_json_list(path, "RSTPReid"), path_key="img_path", id_base=0,
                              splits=("train", "val", "test"), source=path)
    assert len(recs) == 1
    r = recs[0]
    assert (r.index, r.split, r.pid, r.image_path) == (0, "train", 0, "0000_c14_0031.jpg")
    assert r.captions[0] == RSTP_CAPTION0 and len(r.captions) == 2
    # the key is img_path: reading it as file_path fails naming the record and the key
    with pytest.raises(KeyError, match=r"record 0: missing key 'file_path'"):
        parse_text_records(load_json_list(path, "RSTPReid"), path_key="file_path", id_base=0,
                           splits=("train", "val", "test"), source=path)
    # no RSTPReid images exist here: the reader says so
    with pytest.raises(FileNotFoundError, match=r"RSTPReid images: folder .*RSTPReid/imgs"):
        RSTPReid(root=str(shared_data))
    d = RSTPReid(root=str(shared_data), check_images=False)
    assert [(it[1], it[2], it[3]["caption"]) for it in d.train][0] == ("rstpreid_0", "rstpreid_0", RSTP_CAPTION0)


def test_rstpreid_with_images(tmp_path, shared_data):
    os.makedirs(tmp_path / "RSTPReid")
    os.symlink(shared_data / "RSTPReid" / "data_captions.json", tmp_path / "RSTPReid" / "data_captions.json")
    os.makedirs(tmp_path / "RSTPReid" / "imgs")
    with pytest.raises(FileNotFoundError, match=r"record 0: image .*imgs/0000_c14_0031\.jpg' not found"):
        RSTPReid(root=str(tmp_path))
    _img(str(tmp_path / "RSTPReid" / "imgs" / "0000_c14_0031.jpg"))
    d = RSTPReid(root=str(tmp_path))
    assert len(d.train) == 2 and d.train[1][0].endswith("imgs/0000_c14_0031.jpg")


def test_icfg_pedes_tmp_tree(tmp_path):
    base = tmp_path / "ICFG-PEDES"
    recs = [{"split": "train", "captions": ["c0"], "file_path": "train/0000/0000_010_01_0303morning_0001_0.jpg",
             "processed_tokens": [["c0"]], "id": 0},
            {"split": "train", "captions": ["c1"], "file_path": "train/0001/0001_010_05_0303morning_0002_0.jpg",
             "processed_tokens": [["c1"]], "id": 1},
            {"split": "test", "captions": ["t0"], "file_path": "test/3102/3102_001_02_0303noon_0011_1.jpg",
             "processed_tokens": [["t0"]], "id": 3102}]
    _write(str(base / "ICFG-PEDES.json"), recs)
    for r in recs:
        _img(str(base / "imgs" / r["file_path"]))
    d = ICFGPEDES(root=str(tmp_path))
    assert [(t[1], t[3]["caption"]) for t in d.train] == [("icfgpedes_0", "c0"), ("icfgpedes_1", "c1")]
    assert [(q[1], q[2]) for q in d.query] == [(3102, -1)] and [(g[1], g[2]) for g in d.gallery] == [(3102, 0)]
    assert d.parse_data(d.train) == (2, 1)
    with pytest.raises(ValueError, match="eval_split"):
        ICFGPEDES(root=str(tmp_path), eval_split="val")  # ICFG has no val split
    _write(str(base / "ICFG-PEDES.json"), recs + [dict(recs[0], split="val")])
    with pytest.raises(ValueError, match=r"record 3: split 'val' is not one of \['train', 'test'\]"):
        ICFGPEDES(root=str(tmp_path))


@pytest.mark.parametrize("record, message", [
    ({"split": "train", "captions": [], "file_path": "a.jpg", "id": 1}, "record 1: 'captions' must be"),
    ({"split": "train", "captions": ["x", ""], "file_path": "a.jpg", "id": 1}, "record 1: 'captions' must be"),
    ({"split": "train", "captions": ["x"], "file_path": "a.jpg", "id": "one"}, "record 1: 'id' must be an integer"),
    ({"split": "train", "captions": ["x"], "file_path": "a.jpg", "id": 0}, "record 1: id 0 is below"),
    ({"split": "train", "captions": ["x"], "file_path": "", "id": 3}, "record 1: 'file_path' must be"),
    ({"captions": ["x"], "file_path": "a.jpg", "id": 3}, "record 1: missing key 'split'"),
    (["not", "a", "dict"], "record 1: expected an object"),
    ({"split": "train", "captions": ["x"], "file_path": "/etc/passwd", "id": 3}, "record 1: 'file_path' '/etc/passwd' "
                                                                                 "points outside"),
    ({"split": "train", "captions": ["x"], "file_path": "../../x.jpg", "id": 3}, "record 1: 'file_path' "
                                                                                "'../../x.jpg' points outside"),
])
def test_malformed_records(tmp_path, record, message):
    good = {"split": "train", "captions": ["x"], "file_path": "a.jpg", "id": 1}
    _write(str(tmp_path / "CUHK-PEDES" / "reid_raw.json"), [good, record])
    with pytest.raises((ValueError, KeyError), match=r"reid_raw\.json'? " + message):
        CUHKPEDES(root=str(tmp_path))


def test_bad_annotation_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="CUHKPEDES"):
        CUHKPEDES(root=str(tmp_path))
    os.makedirs(tmp_path / "CUHK-PEDES")
    with pytest.raises(FileNotFoundError, match=r"reid_raw\.json"):
        CUHKPEDES(root=str(tmp_path))
    (tmp_path / "CUHK-PEDES" / "reid_raw.json").write_text('[{"split": "train", "captions": ["x"]')
    with pytest.raises(ValueError, match=r"cannot parse .*reid_raw\.json"):
        CUHKPEDES(root=str(tmp_path))
    (tmp_path / "CUHK-PEDES" / "reid_raw.json").write_text('{"split": "train"}')
    with pytest.raises(ValueError, match="must hold a JSON list"):
        CUHKPEDES(root=str(tmp_path))
    (tmp_path / "CUHK-PEDES" / "reid_raw.json").write_text("[]")
    with pytest.raises(ValueError, match=r"reid_raw\.json' holds no records"):
        CUHKPEDES(root=str(tmp_path))
