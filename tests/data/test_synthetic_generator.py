"""The synthetic ReID generator: determinism, real on-disk formats, person-like and identity-consistent images."""
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io as sio

from plugins.data.synthetic import SynthConfig, generate, generate_domain, make_domain, plan_domain, render
from plugins.data.synthetic.captions import tokenize
from plugins.data.synthetic.identity import sample_identity
from plugins.data.synthetic.palette import UPPER_COLOURS

SMALL = SynthConfig(seed=3, train_ids=6, test_ids=6, images_per_id=6, num_cameras=3, height=64, width=32,
                    junk=2, distractors=3)
MARKET_RE = re.compile(r"([-\d]+)_c(\d)")  # fast-reid's Market1501 pattern
FULL_NAME_RE = re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")


def _tree_bytes(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate(root, ("A", "B"), SMALL, progress=False)
    return root


def test_same_seed_is_byte_identical_and_seed_matters(small_root, tmp_path):
    again = tmp_path / "again"
    generate_domain(again, "A", SMALL, progress=False)
    first, second = _tree_bytes(small_root / "A"), _tree_bytes(again / "A")
    assert len(first) > 100 and first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first)
    other = tmp_path / "other"
    generate_domain(other, "A", SynthConfig(**dict(SMALL.to_dict(), seed=4)), formats=("market",), progress=False)
    third = _tree_bytes(other / "A")
    a = [first[k] for k in sorted(first) if k.startswith("bounding_box_train")]
    b = [third[k] for k in sorted(third) if k.startswith("bounding_box_train")]
    assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == len(a)


def test_market_layout_parses_with_fastreid_pattern(small_root):
    dom = small_root / "A"
    counts = {}
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        names = sorted(p.name for p in (dom / split).glob("*.jpg"))
        for n in names:
            assert FULL_NAME_RE.match(n), n
            pid, cam = map(int, MARKET_RE.search(n).groups())
            assert 1 <= cam <= SMALL.num_cameras
        counts[split] = names
    n_query = SMALL.test_ids * SMALL.num_cameras  # one per test id per camera (6 images over 3 cameras)
    assert len(counts["bounding_box_train"]) == SMALL.train_ids * SMALL.images_per_id
    assert len(counts["query"]) == n_query
    gallery = counts["bounding_box_test"]
    assert len(gallery) == SMALL.test_ids * SMALL.images_per_id - n_query + SMALL.junk + SMALL.distractors
    assert sum(n.startswith("-1_") for n in gallery) == SMALL.junk
    assert sum(n.startswith("0000_") for n in gallery) == SMALL.distractors
    # query ids are exactly the test ids, disjoint from train ids; one query per (id, camera)
    qkeys = [MARKET_RE.search(n).groups() for n in counts["query"]]
    assert len(set(qkeys)) == len(qkeys)
    train_ids = {MARKET_RE.search(n).group(1) for n in counts["bounding_box_train"]}
    assert not train_ids & {k[0] for k in qkeys}
    # domains never share identities
    ids_b = {MARKET_RE.search(p.name).group(1) for p in (small_root / "B").glob("*/*.jpg")} - {"-1", "0000"}
    ids_a = {MARKET_RE.search(p.name).group(1) for p in dom.glob("*/*.jpg")} - {"-1", "0000"}
    assert len(ids_a) == len(ids_b) == SMALL.train_ids + SMALL.test_ids
    assert not ids_a & ids_b


def test_registered_dataset_generates_reads_and_regenerates(tmp_path):
    from fastreid.data.datasets import DATASET_REGISTRY

    cls = DATASET_REGISTRY.get("SynthReIDB")
    ds = cls(root=str(tmp_path), config=SMALL)
    manifest = json.loads((tmp_path / "synthreid" / "B" / "manifest.json").read_text())
    assert manifest["config"] == SMALL.to_dict() and manifest["domain"] == "B"
    assert len(ds.train) == SMALL.train_ids * SMALL.images_per_id
    assert ds.get_num_pids(ds.train) == SMALL.train_ids and ds.get_num_cams(ds.train) == SMALL.num_cameras
    assert all(p.startswith("synthreidb_") for _, p, _ in ds.train)
    assert len(ds.query) == SMALL.test_ids * SMALL.num_cameras
    # junk (-1) is dropped, distractors (0) are kept: fast-reid's Market protocol
    n_gallery = SMALL.test_ids * SMALL.images_per_id - len(ds.query) + SMALL.distractors
    assert len(ds.gallery) == n_gallery and sum(p == 0 for _, p, _ in ds.gallery) == SMALL.distractors
    assert {c for _, _, c in ds.query} == set(range(SMALL.num_cameras))
    # same sizes: reused as is; other seed: regenerated in place
    before = (tmp_path / "synthreid" / "B" / "query" / Path(ds.query[0][0]).name).read_bytes()
    cls(root=str(tmp_path), config=SMALL)
    assert (tmp_path / "synthreid" / "B" / "query" / Path(ds.query[0][0]).name).read_bytes() == before
    ds2 = cls(root=str(tmp_path), config=SMALL, seed=11)
    assert json.loads((tmp_path / "synthreid" / "B" / "manifest.json").read_text())["config"]["seed"] == 11
    assert sorted(Path(p).name for p, _, _ in ds2.query) != sorted(Path(p).name for p, _, _ in ds.query)
    assert not list((tmp_path / "synthreid").glob(".*tmp*"))  # temporary folders cleaned up


def test_market_attribute_mat_mirrors_real_file(small_root, shared_data):
    real = sio.loadmat(str(shared_data / "Market-1501-v15.09.15" / "market_attribute.mat"))
    ours = sio.loadmat(str(small_root / "A" / "market_attribute.mat"))
    r, o = real["market_attribute"], ours["market_attribute"]
    assert o.shape == r.shape == (1, 1) and o.dtype.names == r.dtype.names
    plan = plan_domain("A", SMALL)
    for split, pids in (("train", plan.train_pids), ("test", plan.test_pids)):
        rs, os_ = r[0, 0][split], o[0, 0][split]
        assert os_.shape == rs.shape == (1, 1)
        assert os_.dtype.names == rs.dtype.names  # same 27 fields + image_index, same order as the real split
        rs, os_ = rs[0, 0], os_[0, 0]
        for name in os_.dtype.names:
            assert os_[name].shape == (1, len(pids)) and os_[name].dtype == rs[name].dtype, name
        index = [c[0] for c in os_["image_index"][0]]
        assert index == sorted(f"{p:04d}" for p in pids) and os_["image_index"][0, 0].dtype == rs["image_index"][0, 0].dtype
        for j, p in enumerate(sorted(pids)):
            want = plan.identities[p].market_attributes()
            assert {n: int(os_[n][0, j]) for n in want} == want
        assert set(np.unique(os_["age"])) <= {1, 2, 3, 4}
        ups = np.stack([os_["up" + c][0] for c in UPPER_COLOURS])
        assert set(np.unique(ups)) <= {1, 2} and ((ups == 2).sum(0) == 1).all()


def test_rgbnt201_three_modalities(small_root):
    base = small_root / "A" / "RGBNT201"
    for split in ("train_171", "test"):
        names = {m: sorted(p.name for p in (base / split / m).glob("*.jpg")) for m in ("RGB", "NI", "TI")}
        assert names["RGB"] and names["RGB"] == names["NI"] == names["TI"]
        for n in names["RGB"]:
            f = n.split("_")
            assert re.fullmatch(r"\d{6}", f[0]) and re.fullmatch(r"cam[1-4]", f[1]), n
    n = names["RGB"][0]
    ni = cv2.imread(str(base / "test" / "NI" / n)).astype(int)
    assert np.abs(ni[..., 0] - ni[..., 2]).mean() < 2.0  # near-infrared is an intensity image


def test_thermal_body_brighter_and_nir_not_visible_colour():
    style = make_domain("A", 0, 3)
    hot, cold, vis, nir = [], [], [], []
    for p in range(12):
        idt = sample_identity(p + 1, np.random.default_rng(p))
        out = render(idt, style, style.cameras[p % 3], np.random.default_rng(100 + p), 128, 64, ("rgb", "ni", "ti"))
        ti, m = out["ti"][..., 0].astype(float), out["mask"]
        hot.append(ti[m > 0.9].mean())
        cold.append(ti[m < 0.05].mean())
        vis.append(np.mean(idt.upper_rgb))
        nir.append(idt.nir_upper)
        assert out["ni"].shape == out["ti"].shape == out["rgb"].shape == (128, 64, 3)
    assert min(h - c for h, c in zip(hot, cold)) > 40  # every image: the body is warmer than the background
    assert abs(np.corrcoef(vis, nir)[0, 1]) < 0.6  # NIR reflectance is not the visible brightness


def test_cuhk_pedes_json(small_root):
    base = small_root / "A" / "CUHK-PEDES"
    records = json.loads((base / "reid_raw.json").read_text())
    plan = plan_domain("A", SMALL)
    assert len(records) == (SMALL.train_ids + SMALL.test_ids) * SMALL.images_per_id
    assert {r["split"] for r in records} == {"train", "val", "test"}
    ids = sorted({r["id"] for r in records})
    assert ids == list(range(1, SMALL.train_ids + SMALL.test_ids + 1))
    for r in records:
        assert set(r) == {"split", "captions", "file_path", "processed_tokens", "id"}
        assert (base / "imgs" / r["file_path"]).is_file()
        assert len(r["captions"]) == 2 and r["processed_tokens"] == [tokenize(c) for c in r["captions"]]
        idt = plan.identities[int(Path(r["file_path"]).name.split("_")[0])]
        for tokens in r["processed_tokens"]:
            assert idt.upper_colour in tokens and idt.lower_colour in tokens
    assert len({c for r in records for c in r["captions"]}) > len(records)  # captions vary


def test_person_like_silhouette():
    style = make_domain("A", 0, 3)
    masks = [render(sample_identity(p + 1, np.random.default_rng(p)), style, style.cameras[p % 3],
                    np.random.default_rng(p), 128, 64)["mask"] for p in range(20)]
    m = np.mean(masks, 0)
    centre, corners = m[40:90, 24:40].mean(), np.mean([c.mean() for c in (m[:8, :8], m[:8, -8:], m[-6:, :8], m[-6:, -8:])])
    assert centre > 0.8 and corners < 0.05
    assert 0.15 < m.mean() < 0.5  # a standing person, not a blob filling the box
    assert (m[10:120, 30:34].mean(1) > 0.3).mean() > 0.8  # covered from head to feet along the centre line


def _hist(path: Path) -> np.ndarray:
    hsv = cv2.cvtColor(cv2.imread(str(path))[16:-8, 8:-8], cv2.COLOR_BGR2HSV)
    h = cv2.calcHist([hsv], [0, 1], None, [12, 6], [0, 180, 0, 256]).ravel()
    return h / h.sum()


def test_identity_closer_than_other_identities(small_root):
    files = sorted((small_root / "A" / "bounding_box_train").glob("*.jpg"))
    pids = np.array([int(f.name[:4]) for f in files])
    cams = np.array([int(f.name[6]) for f in files])
    hs = np.stack([_hist(f) for f in files])
    d = np.abs(hs[:, None] - hs[None]).sum(-1)  # L1 histogram distance
    same = (pids[:, None] == pids[None]) & (cams[:, None] != cams[None])
    diff = pids[:, None] != pids[None]
    assert d[same].mean() < 0.75 * d[diff].mean()


def test_orphaned_temporary_folders_of_killed_runs_are_removed(tmp_path):
    import importlib
    import os
    import subprocess

    gen = importlib.import_module("plugins.data.synthetic.generate")  # the package's `generate` is a function

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    host = gen._HOST
    orphan = tmp_path / f".A.tmp-{host}-{dead.pid}-abc"
    old = tmp_path / f".A.old-{host}-{dead.pid}-123"
    live = tmp_path / f".A.tmp-{host}-{os.getpid()}-xyz"  # this process: still writing
    other_host = tmp_path / f".A.tmp-otherhost-{dead.pid}-abc"  # a shared filesystem: not ours to judge
    for folder in (orphan, old, live, other_host):
        folder.mkdir()
    assert sorted(gen.remove_orphans(tmp_path, "A")) == sorted([orphan, old])
    assert live.is_dir() and other_host.is_dir() and not orphan.exists() and not old.exists()
