"""``ExtrasDataset``: a drop-in for fast-reid's ``CommDataset`` that maps a reader's extras to the batch keys."""
import random

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from fastreid.config import get_cfg
from fastreid.data.build import fast_batch_collator
from fastreid.data.common import CommDataset
from fastreid.data.transforms import ToTensor
from PIL import Image

from plugins.config import add_plugins_config
from plugins.data.batch import MISSING_ATTRIBUTE, validate_batch
from plugins.data.config import add_data_config
from plugins.data.datasets.multimodal_base import MODALITIES, tile_boxes
from plugins.data.datasets.rgbnt201 import RGBNT201
from plugins.data.mapper import ExtrasDataset, build_extras_dataset, clip_tokenizer, data_options

A_MAN = [49406, 320, 786, 49407]  # open_clip (CLIP BPE) ids of "a man": <start> a man <end>


def png(path, seed, size=(16, 32)):
    """A lossless random image (w x h = size), so transformed pixels can be compared exactly."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


def random_tf():
    """Random flip and crop (+ random erasing after ToTensor): every draw shows in the pixels."""
    return T.Compose([T.Pad(4), T.RandomCrop((32, 16)), T.RandomHorizontalFlip(), ToTensor(),
                      T.RandomErasing(p=0.5, value=0)])


def multimodal_items(tmp_path, n=4):
    """RGB, NI, TI of one sample are the same picture, so synchronised transforms must give equal pixels."""
    items = []
    for i in range(n):
        path = png(tmp_path / f"m{i}.png", i)
        items.append((path, f"d_{i % 2}", f"d_{i % 3}", {"modalities": {m: path for m in MODALITIES}}))
    return items


def tiny_cfg(*opts):
    cfg = add_data_config(add_plugins_config(get_cfg()))
    cfg.merge_from_list(["INPUT.SIZE_TRAIN", [32, 16], "INPUT.SIZE_TEST", [32, 16], *opts])
    return cfg


def test_plain_items_equal_comm_dataset(tmp_path):
    items = [(png(tmp_path / f"{i}.png", i), f"m_{i % 3}", f"m_c{i % 2}") for i in range(5)]
    for relabel in (True, False):
        ours, theirs = ExtrasDataset(items, random_tf(), relabel), CommDataset(items, random_tf(), relabel)
        assert (ours.pids, ours.cams, ours.num_classes, ours.num_cameras) == \
            (theirs.pids, theirs.cams, theirs.num_classes, theirs.num_cameras)
        for i in range(len(items)):
            torch.manual_seed(i), random.seed(i)
            a = ours[i]
            torch.manual_seed(i), random.seed(i)
            b = theirs[i]
            assert list(a) == list(b) == ["images", "targets", "camids", "img_paths"]
            assert torch.equal(a["images"], b["images"])
            assert (a["targets"], a["camids"], a["img_paths"]) == (b["targets"], b["camids"], b["img_paths"])
    # no transform: PIL images, as CommDataset
    assert isinstance(ExtrasDataset(items)[0]["images"], Image.Image)


def test_sync_transforms_give_identical_pixels(tmp_path):
    data = ExtrasDataset(multimodal_items(tmp_path), random_tf(), sync_modalities=True)
    assert data.modality_names == MODALITIES
    torch.manual_seed(0), random.seed(0)
    for _ in range(3):
        for i in range(len(data)):
            out = data[i]
            for m in MODALITIES:
                assert torch.equal(out["modalities"][m], out["images"]), (i, m)
    # the draws still vary between samples/accesses (the RNG is not frozen)
    torch.manual_seed(1), random.seed(1)
    draws = {data[0]["images"].numpy().tobytes() for _ in range(8)}
    assert len(draws) > 1


def test_independent_transforms_differ(tmp_path):
    data = ExtrasDataset(multimodal_items(tmp_path), random_tf(), sync_modalities=False)
    differs = False
    for seed in range(10):
        torch.manual_seed(seed), random.seed(seed)
        out = data[0]
        differs |= not all(torch.equal(out["modalities"][m], out["images"]) for m in MODALITIES)
    assert differs


def test_per_modality_transforms_and_subset(tmp_path):
    items = multimodal_items(tmp_path, n=2)
    flip = T.Compose([T.RandomHorizontalFlip(p=1.0), ToTensor()])
    data = ExtrasDataset(items, ToTensor(), modalities=("NI",), modality_transforms={"NI": flip})
    out = data[0]
    assert list(out["modalities"]) == ["NI"]
    assert torch.equal(out["modalities"]["NI"], out["images"].flip(-1))
    assert list(ExtrasDataset(items, ToTensor(), modalities=())[0]) == ["images", "targets", "camids", "img_paths"]


def test_missing_modality_raises_naming_the_item(tmp_path):
    items = multimodal_items(tmp_path, n=2) + [(png(tmp_path / "plain.png", 9), "d_0", "d_0")]
    with pytest.raises(ValueError, match=r"item 2 \('.*plain.png'\)"):
        ExtrasDataset(items, ToTensor())
    with pytest.raises(KeyError, match="'XX'"):
        ExtrasDataset(items[:2], ToTensor(), modalities=("RGB", "XX"))


def test_tiled_file_gives_its_tiles(tmp_path):
    """RGBNT100 style: one file, RGB | NI | TI side by side; ``images`` is the RGB tile."""
    path = png(tmp_path / "tiled.png", 5, size=(48, 32))
    extras = {"modalities": {m: path for m in MODALITIES}, "tiles": tile_boxes(48, 32), "tiled_size": (48, 32)}
    out = ExtrasDataset([(path, 1, 0, extras)], ToTensor(), relabel=False)[0]
    whole = ToTensor()(Image.open(path).convert("RGB"))
    assert out["images"].shape == (3, 32, 16) and torch.equal(out["images"], whole[..., :16])
    for k, m in enumerate(MODALITIES):
        assert torch.equal(out["modalities"][m], whole[..., 16 * k:16 * (k + 1)])
    bad = dict(extras, tiled_size=(768, 128))
    with pytest.raises(ValueError, match="768x128"):
        ExtrasDataset([(path, 1, 0, bad)], ToTensor())[0]


def test_text_tokens(tmp_path):
    path = png(tmp_path / "t.png", 0)
    items = [(path, 0, -1, {"caption": "a man"}),
             (path, 0, 0, {"captions": ["a man", "a woman in red"]})]
    tokenize = clip_tokenizer(77)
    first = ExtrasDataset(items, ToTensor(), relabel=False, tokenize=tokenize)
    for i in range(2):
        tokens = first[i]["text_tokens"]
        assert tokens.shape == (77,) and tokens.dtype == torch.int64
        assert tokens[:4].tolist() == A_MAN and not tokens[4:].any()
    drawn = ExtrasDataset(items, ToTensor(), relabel=False, tokenize=tokenize, caption_pick="random")
    random.seed(0)
    seen = {tuple(drawn[1]["text_tokens"][:6].tolist()) for _ in range(20)}
    assert len(seen) == 2  # both captions are drawn
    with pytest.raises(ValueError, match="item 2"):
        ExtrasDataset(items + [(path, 0, 0)], ToTensor(), tokenize=tokenize)
    with pytest.raises(ValueError, match="caption_pick"):
        ExtrasDataset(items, tokenize=tokenize, caption_pick="last")


def test_attributes_with_missing(tmp_path):
    path = png(tmp_path / "a.png", 0)
    items = [(path, 1, 0, {"attributes": (0, 1, 3)}), (path, 2, 0, {"attributes": (1, -1, None)}), (path, 3, 1)]
    data = ExtrasDataset(items, ToTensor())
    assert data[0]["attributes"].tolist() == [0, 1, 3]
    assert data[1]["attributes"].tolist() == [1, MISSING_ATTRIBUTE, MISSING_ATTRIBUTE]
    assert data[2]["attributes"].tolist() == [MISSING_ATTRIBUTE] * 3  # an item without attributes
    assert data[0]["attributes"].dtype == torch.int64
    assert "attributes" not in ExtrasDataset(items, ToTensor(), attributes=False)[0]
    with pytest.raises(ValueError, match="item 1"):
        ExtrasDataset([items[0], (path, 2, 0, {"attributes": (1, 0)})])
    with pytest.raises(ValueError, match="item 0"):
        ExtrasDataset([(path, 2, 0, {"attributes": (1, -2)})])


def test_collated_batch_follows_the_contract(tmp_path):
    items = multimodal_items(tmp_path)
    items = [(it[0], k, it[2], {**it[3], "caption": "a man", "attributes": (k, -1)}) for k, it in enumerate(items)]
    data = ExtrasDataset(items, random_tf(), tokenize=clip_tokenizer(), relabel=False)
    batch = fast_batch_collator([data[i] for i in range(len(data))])
    validate_batch(batch)
    assert batch["images"].shape == (4, 3, 32, 16) and set(batch["modalities"]) == set(MODALITIES)
    assert batch["modalities"]["NI"].shape == (4, 3, 32, 16)
    assert batch["text_tokens"].shape == (4, 77) and batch["attributes"].shape == (4, 2)
    assert batch["targets"].tolist() == [0, 1, 2, 3]
    assert batch["camids"] == ["d_0", "d_1", "d_2", "d_0"]  # not relabelled: strings stay a list


def test_config_translation(tmp_path):
    items = multimodal_items(tmp_path, n=2)
    items = [it[:3] + ({**it[3], "caption": "a man"},) for it in items]
    plain = build_extras_dataset(tiny_cfg(), items, is_train=True, relabel=True)
    assert list(plain[0]) == ["images", "targets", "camids", "img_paths"]  # defaults: fast-reid's keys
    cfg = tiny_cfg("PLUGINS.DATA.MODALITIES", ["TI"], "PLUGINS.DATA.TEXT", True,
                   "PLUGINS.DATA.SYNC_MODALITY_TRANSFORMS", False)
    train = build_extras_dataset(cfg, items, is_train=True, relabel=True)
    assert train.modality_names == ("TI",) and not train.sync_modalities and train.caption_pick == "random"
    assert build_extras_dataset(cfg, items, is_train=False, relabel=False).caption_pick == "first"
    assert train[0]["text_tokens"][:4].tolist() == A_MAN
    # a config without PLUGINS.DATA (add_data_config not called yet) gets the defaults
    bare = add_plugins_config(get_cfg())
    assert data_options(bare).MODALITIES == [] and data_options(bare).TEXT is False
    with pytest.raises(ValueError, match="TRAIN_CAPTION"):
        build_extras_dataset(tiny_cfg("PLUGINS.DATA.TRAIN_CAPTION", "all"), items, is_train=True, relabel=True)


def test_rgbnt201_reader_items(tmp_path):
    for split, names in (("train_171", ("000001_cam1_0_00.jpg", "000002_cam3_0_01.jpg")),
                         ("test", ("000172_cam2_0_00.jpg",))):
        for k, name in enumerate(names):
            for m in MODALITIES:
                (tmp_path / "RGBNT201" / split / m).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (16, 32), (40 * k, 100, 200)).save(tmp_path / "RGBNT201" / split / m / name)
    reader = RGBNT201(root=str(tmp_path))
    data = build_extras_dataset(tiny_cfg("PLUGINS.DATA.MODALITIES", list(MODALITIES)), reader.train,
                                is_train=True, relabel=True)
    batch = fast_batch_collator([data[0], data[1]])
    validate_batch(batch)
    assert batch["targets"].tolist() == [0, 1] and batch["camids"].tolist() == [0, 1]
    for m in MODALITIES:  # default SYNC_MODALITY_TRANSFORMS: the same draw as images
        assert torch.equal(batch["modalities"][m], batch["images"])
