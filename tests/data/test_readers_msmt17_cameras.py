"""MSMT17 camera subsets: index logic on the complete official lists, the reader on the real test images."""
import os

import pytest
from PIL import Image

from fastreid.data.datasets import DATASET_REGISTRY
from plugins.data.datasets.msmt17_cameras import (MSMT17CameraSubset, camera_counts, msmt17_camera_subset,
                                                  read_msmt17_list, register_msmt17_camera_subset)

# per-camera image counts of the official lists, counted independently with
#   awk '{split($1,a,"_"); c[a[3]+0]++} END{for(k in c) print k, c[k]}' list_<split>.txt
OFFICIAL_COUNTS = {
    "train": {1: 4504, 2: 193, 3: 416, 4: 1522, 5: 3967, 6: 1577, 7: 3216, 8: 738, 9: 1316, 10: 615, 11: 2931,
              12: 1254, 13: 3410, 14: 3533, 15: 1056},
    "val": {1: 406, 2: 10, 3: 38, 4: 92, 5: 329, 6: 101, 7: 237, 8: 57, 9: 80, 10: 40, 11: 223, 12: 110, 13: 225,
            14: 343, 15: 82},
    "query": {1: 1882, 2: 78, 3: 186, 4: 480, 5: 1689, 6: 524, 7: 1202, 8: 302, 9: 445, 10: 294, 11: 1007,
              12: 381, 13: 1246, 14: 1511, 15: 432},
    "gallery": {1: 12368, 2: 613, 3: 1319, 4: 3440, 5: 11018, 6: 4159, 7: 8199, 8: 2235, 9: 3377, 10: 1958,
                11: 7571, 12: 3136, 13: 9068, 14: 10310, 15: 3390},
}


@pytest.fixture(scope="module")
def official(shared_data):
    base = shared_data / "MSMT17_V1_official_lists"
    return {k: read_msmt17_list(str(base / f"list_{k}.txt")) for k in OFFICIAL_COUNTS}


def test_registered_names():
    names = ["MSMT17Cam5", "MSMT17Cam6", "MSMT17Cam12", "MSMT17Cam13", "MSMT17Cam14", "MSMT17Cam15",
             "MSMT17Cam5_6", "MSMT17Cam12_13_14_15"]
    for n in names:
        cls = DATASET_REGISTRY.get(n)
        assert issubclass(cls, MSMT17CameraSubset) and cls.__name__ == n and cls.gallery_scope == "all"
    assert DATASET_REGISTRY.get("MSMT17Cam12_13_14_15").cameras == (12, 13, 14, 15)
    assert DATASET_REGISTRY.get("MSMT17").__module__.startswith("fastreid")  # fast-reid's reader untouched


def test_official_lists_per_camera(official):
    for split, counts in OFFICIAL_COUNTS.items():
        assert camera_counts(official[split]) == counts
    assert [len(official[k]) for k in ("train", "val", "query", "gallery")] == [30248, 2373, 11659, 82161]
    # train ids are consistent: the folder is the label, val only holds training ids, 1041 train / 3060 test ids
    assert all(rel.split("/")[0] == f"{pid:04d}" for k in official for rel, pid, _ in official[k])
    train_ids = {p for _, p, _ in official["train"]}
    assert {p for _, p, _ in official["val"]} <= train_ids and len(train_ids) == 1041
    assert len({p for _, p, _ in official["query"]}) == len({p for _, p, _ in official["gallery"]}) == 3060


@pytest.fixture(scope="module")
def official_tree(tmp_path_factory, shared_data):
    """MSMT17_V1 layout whose lists are the official ones (no images: readers run with check_images=False)."""
    root = tmp_path_factory.mktemp("msmt_lists")
    base = root / "MSMT17_V1"
    os.makedirs(base / "train")
    os.makedirs(base / "test")
    for k in OFFICIAL_COUNTS:
        os.symlink(shared_data / "MSMT17_V1_official_lists" / f"list_{k}.txt", base / f"list_{k}.txt")
    return root


def test_subset_splits_at_full_scale(official_tree, official):
    d = DATASET_REGISTRY.get("MSMT17Cam12")(root=str(official_tree), check_images=False)
    assert (len(d.train), len(d.query), len(d.gallery)) == (1254, 381, 82161)
    assert {it[2] for it in d.train} == {"msmt17_11"} and {it[2] for it in d.query} == {11}
    assert len({it[1] for it in d.train}) == 302  # awk: ids seen by camera 12 in list_train
    assert {it[1] for it in d.train} == {f"msmt17_{p}" for _, p, c in official["train"] if c == 12}
    d = DATASET_REGISTRY.get("MSMT17Cam5")(root=str(official_tree), check_images=False)
    assert (len(d.train), len(d.query)) == (3967, 1689)
    assert len({it[1] for it in d.query}) == 854
    d = DATASET_REGISTRY.get("MSMT17Cam12_13_14_15")(root=str(official_tree), check_images=False)
    assert len(d.train) == 1254 + 3410 + 3533 + 1056 and d.get_num_cams(d.train) == 4
    # sources listed separately in DATASETS.NAMES share the msmt17_ prefix: the pooled ids equal the union
    parts = [DATASET_REGISTRY.get(f"MSMT17Cam{c}")(root=str(official_tree), check_images=False) for c in (12, 13)]
    assert len({it[1] for p in parts for it in p.train}) == len(
        {p for _, p, c in official["train"] if c in (12, 13)})
    cls = msmt17_camera_subset([6, 5], gallery_scope="subset")
    assert cls.__name__ == "MSMT17Cam5_6Gallery"
    d = cls(root=str(official_tree), check_images=False, combineall=False)
    assert (len(d.train), len(d.query), len(d.gallery)) == (3967 + 1577, 1689 + 524, 11018 + 4159)


def test_reader_on_real_test_images(tmp_path, shared_data):
    base = tmp_path / "MSMT17_V1"
    os.makedirs(base)
    os.symlink(shared_data / "MSMT17_V1" / "test", base / "test")
    for k in ("query", "gallery"):
        os.symlink(shared_data / "MSMT17_V1" / f"list_{k}.txt", base / f"list_{k}.txt")
    train_lines = ["0001/0001_000_12_0303morning_0001_0.jpg 1", "0001/0001_001_13_0303morning_0002_0.jpg 1",
                   "0002/0002_000_12_0303noon_0003_1.jpg 2"]
    for line in train_lines:
        rel = line.split()[0]
        os.makedirs(base / "train" / os.path.dirname(rel), exist_ok=True)
        Image.new("RGB", (8, 16)).save(base / "train" / rel)
    (base / "list_train.txt").write_text("\n".join(train_lines) + "\n")
    (base / "list_val.txt").write_text("")
    d = DATASET_REGISTRY.get("MSMT17Cam12")(root=str(tmp_path))
    assert [(it[1], it[2]) for it in d.train] == [("msmt17_1", "msmt17_11"), ("msmt17_2", "msmt17_11")]
    assert [(os.path.basename(q[0]), q[1], q[2]) for q in d.query] == [("2744_001_12_0114noon_0960_1_ex.jpg", 2744, 11)]
    assert len(d.gallery) == 14 and all(os.path.isfile(g[0]) for g in d.gallery)
    # the query's id has a gallery image from another camera (6): a valid cross-camera match exists
    assert [(g[1], g[2]) for g in d.gallery if g[1] == 2744] == [(2744, 5)]
    with pytest.raises(ValueError, match="no training image of cameras"):
        DATASET_REGISTRY.get("MSMT17Cam5")(root=str(tmp_path))
    # a listed image that is missing is named
    (base / "list_train.txt").write_text("\n".join(train_lines + ["0003/0003_000_12_0303noon_0009_1.jpg 3"]))
    with pytest.raises(FileNotFoundError, match=r"0003_000_12_0303noon_0009_1\.jpg' listed in list_train"):
        DATASET_REGISTRY.get("MSMT17Cam12")(root=str(tmp_path))


@pytest.mark.parametrize("line, message", [
    ("0001/0001_000_12_0303morning_0001_0.jpg", "line 2: expected '<relative image path> <pid>'"),
    ("0001/0001_000_12_0303morning_0001_0.jpg one", "line 2: expected"),
    ("0001/0001_000_16_0303morning_0001_0.jpg 1", "line 2: the 3rd '_' field .* must be a camera 1..15"),
    ("0001/0001_000.jpg 1", "line 2: the 3rd '_' field"),
])
def test_malformed_list_lines(tmp_path, line, message):
    p = tmp_path / "list_train.txt"
    p.write_text("0001/0001_000_12_0303morning_0001_0.jpg 1\n" + line + "\n")
    with pytest.raises(ValueError, match=r"list_train\.txt' " + message):
        read_msmt17_list(str(p))


def test_factory_and_layout_errors(tmp_path):
    with pytest.raises(ValueError, match="subset of 1..15"):
        msmt17_camera_subset([0, 3])
    with pytest.raises(ValueError, match="single camera 5"):
        msmt17_camera_subset([5], gallery_scope="subset")
    with pytest.raises(ValueError, match="'MSMT17Cam5' is already registered"):
        register_msmt17_camera_subset([5])
    with pytest.raises(FileNotFoundError, match="MSMT17_V1"):
        DATASET_REGISTRY.get("MSMT17Cam5")(root=str(tmp_path))
    os.makedirs(tmp_path / "MSMT17_V1" / "train")
    with pytest.raises(FileNotFoundError, match=r"MSMT17 test images: folder .*MSMT17_V1/test"):
        DATASET_REGISTRY.get("MSMT17Cam5")(root=str(tmp_path))
    os.makedirs(tmp_path / "MSMT17_V1" / "test")
    with pytest.raises(FileNotFoundError, match=r"list_train\.txt"):
        DATASET_REGISTRY.get("MSMT17Cam5")(root=str(tmp_path))
