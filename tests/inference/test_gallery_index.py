"""Gallery feature file: round trip, incremental re-indexing, file-name ids."""
from __future__ import annotations

import os

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from inference_models import make_cfg, save_checkpoint, write_images
from plugins.inference.gallery_index import (GalleryIndex, list_image_items, model_fingerprint,
                                             parse_market_name, update_index)
from plugins.inference.predictor import Predictor


def test_parse_names():
    assert parse_market_name("/x/0002_c3s1_000451_03.jpg") == (2, 2)
    assert parse_market_name("-1_c1s1_000401_03.jpg") == (-1, 0)
    assert parse_market_name("0000_045_12_0303morning_0006_2.jpg") == (0, 11)  # MSMT17: camera is field 3
    assert parse_market_name("0001_c5_000123.jpg") == (1, 4)                   # VeRi
    assert parse_market_name("holiday.png") == (-1, 0)


def test_incremental_index_embeds_only_new_images(tmp_path):
    cfg = make_cfg("osnet")
    predictor = Predictor(cfg, save_checkpoint(cfg, tmp_path / "m.pth"))
    calls = []

    def embed(items):
        calls.append([it[0] for it in items])
        return predictor.embed_items(items)

    folder = tmp_path / "gallery"
    write_images(folder, [(p, 1) for p in range(1, 9)], seed=0)
    path = str(tmp_path / "gallery.safetensors")
    fp = model_fingerprint(predictor.cfg, predictor.cfg.MODEL.WEIGHTS)
    first = update_index(list_image_items(str(folder)), embed, path, fp)
    assert first.embedded == 8 and len(calls[-1]) == 8

    added = write_images(folder / "new", [(20, 2), (21, 2)], seed=9)
    second = update_index(list_image_items(str(folder)), embed, path, fp)
    assert second.embedded == 2 and sorted(calls[-1]) == sorted(added)
    fresh = predictor.embed_items(list_image_items(str(folder)))
    torch.testing.assert_close(second.features, fresh, rtol=1e-5, atol=1e-6)
    saved = GalleryIndex.load(path)
    assert (saved.paths, saved.pids, saved.camids, saved.stamps, saved.model) == \
        (second.paths, second.pids, second.camids, second.stamps, fp)
    assert torch.equal(saved.features, second.features)

    os.remove(added[0])  # removed images leave the index without embedding anything
    third = update_index(list_image_items(str(folder)), embed, path, fp)
    assert third.embedded == 0 and len(third) == 9 and added[0] not in third.paths
    assert third.pids[-1] == 21 and third.camids[-1] == 1

    Image.new("RGB", (32, 64), (200, 10, 10)).save(added[1])  # the same name, new content: embedded again
    os.utime(added[1], ns=(1, 1))
    assert update_index(list_image_items(str(folder)), embed, path, fp).embedded == 1
    assert update_index(list_image_items(str(folder)), embed, path, "another model").embedded == 9


def test_fingerprint_ignores_search_options(tmp_path):
    weights = save_checkpoint(make_cfg("osnet"), tmp_path / "m.pth")
    base = model_fingerprint(make_cfg("osnet"), weights)
    assert model_fingerprint(make_cfg("osnet", "TEST.RERANK.ENABLED", "True", "OUTPUT_DIR", "x"), weights) == base
    assert model_fingerprint(make_cfg("osnet", "TEST.FLIP.ENABLED", "True"), weights) != base
    assert model_fingerprint(make_cfg("osnet", "MODEL.HEADS.NECK_FEAT", "after"), weights) != base


def test_not_an_index_fails_naming_the_file(tmp_path):
    path = str(tmp_path / "weights.safetensors")
    save_file({"features": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match="weights.safetensors.*not a gallery index"):
        GalleryIndex.load(path)
    with pytest.raises(FileNotFoundError, match="no images"):
        list_image_items(str(tmp_path))
