"""Market-1501-attribute / DukeMTMC-attribute readers on the real .mat files and on trees built in tmp dirs."""
import os
import shutil

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fastreid.data.common import CommDataset
from fastreid.data.datasets import DATASET_REGISTRY
from plugins.data.datasets.attribute_base import UNKNOWN, load_attribute_mat
from plugins.data.datasets.duke_attribute import DUKE_ATTRIBUTES, DukeMTMCAttribute
from plugins.data.datasets.market_attribute import MARKET_ATTRIBUTES, Market1501Attribute

MARKET = "Market-1501-v15.09.15"


def _named(values, specs):
    return {s.name: v for s, v in zip(specs, values)}


def _jpg(path, color=(10, 20, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 16), color).save(path)


def _market_tree(tmp_path, shared_data, extra_gallery=()):
    """Real Market sample images and .mat (symlinked) + extra gallery files made here."""
    root = tmp_path / "m"
    os.makedirs(root / MARKET)
    os.symlink(shared_data / MARKET / "market_attribute.mat", root / MARKET / "market_attribute.mat")
    for sub in ("bounding_box_train", "query", "bounding_box_test"):
        os.makedirs(root / MARKET / sub)
        for name in os.listdir(shared_data / MARKET / sub):
            os.symlink(shared_data / MARKET / sub / name, root / MARKET / sub / name)
    for name in extra_gallery:
        _jpg(str(root / MARKET / "bounding_box_test" / name))
    return root


def test_registered():
    assert DATASET_REGISTRY.get("Market1501Attribute") is Market1501Attribute
    assert DATASET_REGISTRY.get("DukeMTMCAttribute") is DukeMTMCAttribute
    assert len(MARKET_ATTRIBUTES) == 27 and len(DUKE_ATTRIBUTES) == 23


def test_market_mat_known_values(shared_data):
    mat = shared_data / MARKET / "market_attribute.mat"
    raw = scipy.io.loadmat(mat)["market_attribute"][0, 0]
    # the two splits store the fields in different orders: a positional reader would mix attributes up
    assert raw["train"].dtype.names != raw["test"].dtype.names
    table = load_attribute_mat(str(mat), "market_attribute", MARKET_ATTRIBUTES)
    assert len(table["train"]) == 751 and len(table["test"]) == 750
    # read by hand from the .mat (raw 1/2 -> 0/1, age 1-4 -> 0-3)
    a = _named(table["train"][2], MARKET_ATTRIBUTES)
    assert (a["gender"], a["hair"], a["up"], a["down"], a["clothes"], a["age"]) == (0, 0, 1, 1, 1, 1)
    assert (a["hat"], a["backpack"], a["bag"], a["handbag"]) == (0, 0, 0, 0)
    assert a["upred"] == 1 and a["downblue"] == 1
    assert sum(v for k, v in a.items() if k.startswith("up") and k != "up") == 1
    b = _named(table["test"][4], MARKET_ATTRIBUTES)
    assert (b["backpack"], b["downblack"], b["upred"], b["age"], b["gender"]) == (1, 1, 1, 1, 0)
    assert b["downblue"] == 0 and b["upblack"] == 0
    # colour groups are not one-hot: 78 train ids have no upper colour
    up = [i for i, s in enumerate(MARKET_ATTRIBUTES) if s.group == "upper_colour"]
    assert sum(all(v[i] == 0 for i in up) for v in table["train"].values()) == 78
    assert all(0 <= v[9] <= 3 for v in table["train"].values())  # age


def test_market_reader_real_samples(shared_data):
    d = Market1501Attribute(root=str(shared_data))
    assert (len(d.train), len(d.query), len(d.gallery)) == (32, 32, 32)
    path, pid, camid, extras = d.train[0]
    assert os.path.basename(path) == "0002_c1s1_069056_02.jpg"
    assert (pid, camid) == ("market1501attr_2", "market1501attr_0")
    assert _named(extras["attributes"], MARKET_ATTRIBUTES)["upred"] == 1
    q = {os.path.basename(it[0]): it for it in d.query}["0004_c2s3_059152_00.jpg"]
    assert q[1:3] == (4, 1) and _named(q[3]["attributes"], MARKET_ATTRIBUTES)["backpack"] == 1
    assert d.parse_data(d.train) == (16, 6)
    # fast-reid's consumer reads items 0..2 and ignores the extras
    ds = CommDataset(d.train, transform=None, relabel=True)
    out = ds[0]
    assert out["targets"] == ds.pid_dict["market1501attr_2"] and out["camids"] == ds.cam_dict["market1501attr_0"]
    assert isinstance(out["images"], Image.Image) and out["img_paths"] == path
    assert ds.num_classes == 16


def test_market_distractor_and_junk_policies(tmp_path, shared_data):
    root = _market_tree(tmp_path, shared_data, ["0000_c1s1_000151_01.jpg", "-1_c3s1_000201_00.jpg"])
    unknown = (UNKNOWN,) * 27

    d = Market1501Attribute(root=str(root))  # defaults: keep distractors as unknown, drop junk (fast-reid)
    by_pid = {it[1]: it for it in d.gallery}
    assert len(d.gallery) == 33 and by_pid[0][3]["attributes"] == unknown and -1 not in by_pid

    d = Market1501Attribute(root=str(root), attribute_file=str(shared_data / MARKET / "market_attribute.mat"),
                            distractors="drop", junk="unknown")
    by_pid = {it[1]: it for it in d.gallery}
    assert len(d.gallery) == 33 and 0 not in by_pid and by_pid[-1][3]["attributes"] == unknown

    with pytest.raises(ValueError, match="distractors"):
        Market1501Attribute(root=str(root), distractors="keep")


def test_market_errors(tmp_path, shared_data):
    with pytest.raises(FileNotFoundError, match="market_attribute.mat"):
        Market1501Attribute(root=str(tmp_path))  # nothing there: the annotation is the first thing looked up
    root = _market_tree(tmp_path, shared_data, ["1600_c2s1_000301_01.jpg"])
    mat = str(shared_data / MARKET / "market_attribute.mat")
    with pytest.raises(KeyError, match=r"identity 1600 of image .*1600_c2s1_000301_01\.jpg.*'test'.*market_attr"):
        Market1501Attribute(root=str(root), attribute_file=mat)
    os.remove(root / MARKET / "bounding_box_test" / "1600_c2s1_000301_01.jpg")
    shutil.rmtree(root / MARKET / "query")
    with pytest.raises(FileNotFoundError, match=r"query images.*query"):
        Market1501Attribute(root=str(root), attribute_file=mat)


def _write_mat(path, struct, splits):
    scipy.io.savemat(path, {struct: splits})


def test_attribute_mat_errors(tmp_path):
    specs = MARKET_ATTRIBUTES[:2]
    good = {"gender": np.array([[1, 2]], np.uint8), "hair": np.array([[2, 1]], np.uint8),
            "image_index": np.array([["0001", "0003"]], dtype=object)}
    p = str(tmp_path / "a.mat")
    _write_mat(p, "market_attribute", {"train": good, "test": dict(good, hair=np.array([[0, 1]], np.uint8))})
    t = load_attribute_mat(p, "market_attribute", specs)
    assert t["train"] == {1: (0, 1), 3: (1, 0)} and t["test"][1] == (0, UNKNOWN)

    with pytest.raises(KeyError, match="no struct 'duke_attribute'"):
        load_attribute_mat(p, "duke_attribute", specs)
    _write_mat(p, "market_attribute", {"train": good, "test": {k: v for k, v in good.items() if k != "hair"}})
    with pytest.raises(KeyError, match=r"market_attribute\.test has no field 'hair'"):
        load_attribute_mat(p, "market_attribute", specs)
    _write_mat(p, "market_attribute", {"train": dict(good, gender=np.array([[1, 3]], np.uint8)), "test": good})
    with pytest.raises(ValueError, match=r"train\.gender of identity 0003 is 3"):
        load_attribute_mat(p, "market_attribute", specs)
    _write_mat(p, "market_attribute", {"train": dict(good, hair=np.array([[2.0, np.nan]])), "test": good})
    with pytest.raises(ValueError, match=r"train\.hair of identity 0003 is nan: attribute values must be whole"):
        load_attribute_mat(p, "market_attribute", specs)  # was read as -9223372036854775808
    _write_mat(p, "market_attribute", {"train": good})
    with pytest.raises(KeyError, match="no split 'test'"):
        load_attribute_mat(p, "market_attribute", specs)
    bad = tmp_path / "corrupt.mat"
    bad.write_bytes(b"MATLAB 5.0 MAT-file, this is not really one" + bytes(range(256)))
    with pytest.raises(ValueError, match=r"cannot read attribute file .*corrupt\.mat"):
        load_attribute_mat(str(bad), "market_attribute", specs)
    with pytest.raises(FileNotFoundError, match="missing.mat"):
        load_attribute_mat(str(tmp_path / "missing.mat"), "market_attribute", specs)


def test_duke_mat_known_values(shared_data):
    table = load_attribute_mat(str(shared_data / "DukeMTMC-attribute" / "duke_attribute.mat"), "duke_attribute",
                               DUKE_ATTRIBUTES)
    assert len(table["train"]) == 702 and len(table["test"]) == 1110
    top = [s.name for s in DUKE_ATTRIBUTES].index("top")
    assert sorted(pid for pid, v in table["train"].items() if v[top] == UNKNOWN) == [370, 679]
    assert all(v[top] != UNKNOWN for v in table["test"].values())
    a = _named(table["train"][1], DUKE_ATTRIBUTES)
    assert (a["backpack"], a["shoes"], a["top"], a["gender"], a["upblack"], a["downblack"]) == (1, 1, 0, 0, 1, 1)
    b = _named(table["train"][370], DUKE_ATTRIBUTES)
    assert (b["gender"], b["bag"], b["boots"], b["downblue"], b["upblack"], b["top"]) == (1, 1, 1, 1, 1, UNKNOWN)
    c = _named(table["test"][2], DUKE_ATTRIBUTES)
    assert (c["gender"], c["handbag"], c["downblack"], c["upblack"], c["shoes"]) == (1, 1, 1, 1, 0)
    low = [i for i, s in enumerate(DUKE_ATTRIBUTES) if s.group == "lower_colour"]
    assert any(sum(v[i] for i in low) > 1 for v in table["test"].values())  # several lower colours exist


def test_duke_reader_on_tmp_tree(tmp_path, shared_data):
    root = tmp_path / "d"
    os.makedirs(root)
    os.symlink(shared_data / "DukeMTMC-attribute", root / "DukeMTMC-attribute")  # the repo-checkout location
    duke = root / "DukeMTMC-reID"
    for sub, names in {"bounding_box_train": ["0001_c2_f0046182.jpg", "0370_c5_f0107745.jpg"],
                       "query": ["0002_c1_f0044158.jpg"],
                       "bounding_box_test": ["0002_c3_f0048201.jpg", "7139_c8_f0100110.jpg"]}.items():
        for n in names:
            _jpg(str(duke / sub / n))
    d = DukeMTMCAttribute(root=str(root))
    assert sorted(it[1] for it in d.train) == ["dukemtmcattr_1", "dukemtmcattr_370"]
    tr = {it[1]: it for it in d.train}
    assert tr["dukemtmcattr_370"][2] == "dukemtmcattr_4"
    assert _named(tr["dukemtmcattr_370"][3]["attributes"], DUKE_ATTRIBUTES)["top"] == UNKNOWN
    assert _named(d.query[0][3]["attributes"], DUKE_ATTRIBUTES)["handbag"] == 1
    assert {it[1] for it in d.gallery} == {2, 7139}  # a gallery distractor id has attributes too
    # combineall keeps the extras of query/gallery items
    d2 = DukeMTMCAttribute(root=str(root), combineall=True)
    assert len(d2.train) == 5 and all(len(it) == 4 for it in d2.train)
    assert d2.train[-1][1] == "dukemtmcattr_test_7139"

    _jpg(str(duke / "bounding_box_train" / "9998_c1_f0000001.jpg"))
    with pytest.raises(KeyError, match=r"identity 9998 of image .*9998_c1_f0000001\.jpg.*'train'"):
        DukeMTMCAttribute(root=str(root))
    with pytest.raises(FileNotFoundError, match="DukeMTMC-reID"):
        DukeMTMCAttribute(root=str(tmp_path / "nowhere"))
