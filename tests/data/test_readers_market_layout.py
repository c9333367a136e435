"""Occluded-DukeMTMC and IUSTPersonReID readers on trees in their published Market-1501 layout, built in tmp dirs."""
from __future__ import annotations

import pytest
from PIL import Image

from fastreid.data.datasets import DATASET_REGISTRY

TREES = {"OccludedDukeMTMC": "Occluded_Duke", "IUSTPersonReID": "IUSTPersonReID"}
FILES = {"bounding_box_train": ["0002_c1_f0000001.jpg", "0001_c2_f0000002.jpg", "0001_c8_f0000003.jpg"],
         "query": ["0005_c3_f0000004.jpg"],
         "bounding_box_test": ["0005_c19_f0000005.jpg", "-1_c1_f0000006.jpg", "0000_c4_f0000007.jpg"]}


def build(root, folder, files=FILES):
    for sub, names in files.items():
        (root / folder / sub).mkdir(parents=True, exist_ok=True)
        for name in names:
            Image.new("RGB", (8, 16)).save(root / folder / sub / name)


@pytest.mark.parametrize("name", sorted(TREES))
def test_reads_the_published_layout(tmp_path, name):
    build(tmp_path, TREES[name])
    data = DATASET_REGISTRY.get(name)(root=str(tmp_path))
    prefix = data.dataset_name
    assert [(p.split("/")[-1], pid, cam) for p, pid, cam in data.train] == [
        ("0001_c2_f0000002.jpg", f"{prefix}_1", f"{prefix}_1"), ("0001_c8_f0000003.jpg", f"{prefix}_1", f"{prefix}_7"),
        ("0002_c1_f0000001.jpg", f"{prefix}_2", f"{prefix}_0")]  # sorted, cameras 0-based
    assert [(pid, cam) for _, pid, cam in data.query] == [(5, 2)]
    assert [(pid, cam) for _, pid, cam in data.gallery] == [(0, 3), (5, 18)]  # junk -1 dropped, 2-digit camera


@pytest.mark.parametrize("name", sorted(TREES))
def test_missing_split_folder_is_named(tmp_path, name):
    build(tmp_path, TREES[name], {"bounding_box_train": ["0001_c1_x.jpg"], "query": ["0001_c2_x.jpg"]})
    with pytest.raises(FileNotFoundError, match="bounding_box_test"):
        DATASET_REGISTRY.get(name)(root=str(tmp_path))


def test_badly_named_file_is_named(tmp_path):
    build(tmp_path, "Occluded_Duke", {**FILES, "query": ["person5.jpg"]})
    with pytest.raises(ValueError, match="person5.jpg"):
        DATASET_REGISTRY.get("OccludedDukeMTMC")(root=str(tmp_path))


def test_empty_split_is_named(tmp_path):
    build(tmp_path, "IUSTPersonReID", {**FILES, "query": []})
    with pytest.raises(FileNotFoundError, match="no .jpg/.png images"):
        DATASET_REGISTRY.get("IUSTPersonReID")(root=str(tmp_path))
