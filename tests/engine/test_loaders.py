"""The loader helper: each loader yields exactly the batches of the hand-built fast-reid / torch loader it
replaced (same seeds -> same images, order and augmentations), plus the extras asked for in ``PLUGINS.DATA``."""
import random

import numpy as np
import pytest
import torch
from fastreid.config import get_cfg
from fastreid.data import samplers
from fastreid.data.build import build_reid_test_loader, build_reid_train_loader, fast_batch_collator
from fastreid.data.common import CommDataset
from fastreid.data.transforms import build_transforms
from PIL import Image
from torch.utils.data import DataLoader

from plugins.config import add_plugins_config
from plugins.data.batch import validate_batch
from plugins.data.config import add_data_config
from plugins.engine.loaders import (dataset_items, make_dataset_test_loader, make_pool_epoch_loader, make_pool_loader,
                                    make_test_loader, make_train_loader, pool_batch, pool_items)


def tiny_cfg(*opts):
    cfg = add_data_config(add_plugins_config(get_cfg()))
    cfg.merge_from_list(["INPUT.SIZE_TRAIN", [32, 16], "INPUT.SIZE_TEST", [32, 16], "INPUT.FLIP.ENABLED", True,
                         "INPUT.REA.ENABLED", True, "DATALOADER.NUM_WORKERS", 0, "SOLVER.IMS_PER_BATCH", 4,
                         "DATALOADER.NUM_INSTANCE", 2, "TEST.IMS_PER_BATCH", 3, *opts])
    return cfg


def make_items(tmp_path, n=10, attributes=False):
    """Reader-style train items: pid "d_<k>" (k = i // 2), camid "d_<i % 3>"."""
    items = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)).save(path)
        item = (str(path), f"d_{i // 2}", f"d_{i % 3}")
        items.append(item + ({"attributes": (i % 2, -1)},) if attributes else item)
    return items


def seed_all(seed):
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert list(x) == list(y)
        for key in x:
            assert torch.equal(x[key], y[key]) if torch.is_tensor(x[key]) else x[key] == y[key], key


@pytest.mark.parametrize("sampler", ["TrainingSampler", "NaiveIdentitySampler"])
def test_train_loader_matches_fastreid(tmp_path, sampler):
    cfg = tiny_cfg("DATALOADER.SAMPLER_TRAIN", sampler)
    items = make_items(tmp_path)
    seed_all(0)
    ours = take(make_train_loader(cfg, items), 3)
    seed_all(0)
    theirs = take(build_reid_train_loader(cfg, train_set=CommDataset(items, build_transforms(cfg, True))), 3)
    same_batches(ours, theirs)
    for b in ours:
        validate_batch(b)
        assert b["images"].shape == (4, 3, 32, 16)


def test_train_loader_given_sampler_and_relabel(tmp_path):
    cfg = tiny_cfg()
    items = [(p, int(pid[2:]), 7) for p, pid, _ in make_items(tmp_path)]  # already-numbered pseudo-labels
    seed_all(1)
    ours = take(make_train_loader(cfg, items, sampler=samplers.TrainingSampler(len(items), seed=3), relabel=False), 2)
    seed_all(1)
    theirs = take(build_reid_train_loader(cfg, train_set=CommDataset(items, build_transforms(cfg, True), False),
                                          sampler=samplers.TrainingSampler(len(items), seed=3)), 2)
    same_batches(ours, theirs)
    assert set(ours[0]["camids"].tolist()) == {7}


def test_train_loader_carries_attributes(tmp_path):
    cfg = tiny_cfg("PLUGINS.DATA.ATTRIBUTES", True)
    batch = next(iter(make_train_loader(cfg, make_items(tmp_path, attributes=True))))
    validate_batch(batch)
    assert batch["attributes"].shape == (4, 2) and (batch["attributes"][:, 1] == -1).all()


def test_test_loader_matches_fastreid(tmp_path):
    cfg = tiny_cfg()
    items = [(p, i // 2, i % 3) for i, (p, _, _) in enumerate(make_items(tmp_path, n=7))]
    loader, num_query = make_test_loader(cfg, items[:3], items[3:])
    assert num_query == 3
    ref, _ = build_reid_test_loader(test_set=CommDataset(items, build_transforms(cfg, False), relabel=False),
                                    test_batch_size=3, num_query=3, num_workers=0)
    ours = list(loader)
    same_batches(ours, list(ref))
    assert [len(b["img_paths"]) for b in ours] == [3, 3, 1]  # every item once, in order, last batch kept
    assert sum((b["img_paths"] for b in ours), []) == [it[0] for it in items]


def test_pool_loaders_match_the_replaced_code(tmp_path):
    cfg = tiny_cfg()
    pool = [(p, i % 3) for i, (p, _, _) in enumerate(make_items(tmp_path, n=9))]
    assert pool_items(pool)[4] == (pool[4][0], 0, 1)

    # feature extraction (PseudoLabelHook / extract_features): fast-reid's test loader, camids as given
    ref, _ = build_reid_test_loader(test_set=CommDataset([(p, 0, c) for p, c in pool], build_transforms(cfg, False),
                                                         relabel=False), test_batch_size=4, num_query=0, num_workers=0)
    same_batches(list(make_pool_loader(cfg, pool, batch_size=4)), list(ref))

    # BN re-estimation: one shuffled, seeded epoch with the train transforms, drop_last, camids relabelled
    seed_all(5)
    ours = list(make_pool_epoch_loader(cfg, pool, batch_size=4, relabel=True))
    seed_all(5)
    data = CommDataset([(p, 0, c) for p, c in pool], build_transforms(cfg, True), relabel=True)
    theirs = list(DataLoader(data, batch_size=4, shuffle=True, drop_last=True, num_workers=0,
                             collate_fn=fast_batch_collator))
    same_batches(ours, theirs)
    assert len(ours) == 2  # 9 images, batches of 4: the incomplete one is dropped
    assert len(list(make_pool_epoch_loader(cfg, pool[:3], batch_size=4))) == 1  # a single short batch is kept
    seed_all(5)
    same_batches(list(make_pool_epoch_loader(cfg, pool, batch_size=4, relabel=True)), ours)  # repeatable

    # LoRAHub objective batch: all items, in order, test transforms, on this process
    batch = pool_batch(cfg, pool[:5])
    ref = fast_batch_collator([CommDataset([(p, 0, c) for p, c in pool[:5]], build_transforms(cfg, False),
                                           relabel=False)[i] for i in range(5)])
    same_batches([batch], [ref])
    validate_batch(batch)


def _market(root):
    base = root / "Market-1501-v15.09.15"
    for d, names in (("bounding_box_train", ["0001_c1s1_000001_00.jpg", "0001_c2s1_000002_00.jpg",
                                             "0002_c1s1_000003_00.jpg", "0002_c3s1_000004_00.jpg"]),
                     ("query", ["0003_c1s1_000005_00.jpg"]),
                     ("bounding_box_test", ["0003_c2s1_000006_00.jpg", "0004_c1s1_000007_00.jpg"])):
        (base / d).mkdir(parents=True)
        for k, name in enumerate(names):
            Image.new("RGB", (16, 32), (30 * k, 60, 90)).save(base / d / name)


def test_registered_datasets(tmp_path, monkeypatch):
    _market(tmp_path)
    monkeypatch.setenv("FASTREID_DATASETS", str(tmp_path))
    cfg = tiny_cfg("DATASETS.NAMES", ("Market1501",), "DATALOADER.SAMPLER_TRAIN", "TrainingSampler")
    assert len(dataset_items(["Market1501"], "train")) == 4
    assert [it[1] for it in dataset_items(["Market1501"], "query")] == [3]
    batch = next(iter(make_train_loader(cfg)))  # items=None: DATASETS.NAMES, as fast-reid's default
    assert batch["images"].shape == (4, 3, 32, 16) and set(batch["targets"].tolist()) <= {0, 1}
    loader, num_query = make_dataset_test_loader(cfg, "Market1501")
    assert num_query == 1
    paths = sum((b["img_paths"] for b in loader), [])
    assert [p.rsplit("/", 1)[1][:4] for p in paths] == ["0003", "0003", "0004"]
    with pytest.raises(ValueError, match="split"):
        dataset_items(["Market1501"], "test")
