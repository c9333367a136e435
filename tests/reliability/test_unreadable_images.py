"""A broken image is named, before and during the work: fast-reid's ``read_image`` fails naming the file (patch
``named_unreadable_image``), ``tools/check_images.py`` lists every unreadable image of a config or folder, and a
crash in the final evaluation no longer loses the training (patch ``final_checkpoint_before_eval``)."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plugins.compat.training import UnreadableImageError, read_image_naming_file

REPO = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("check_images_tool", REPO / "tools" / "check_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(good, quality=95)
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = folder / "notes.png"
    text.write_text("not an image")
    return {"good": good, "truncated": truncated, "text": text}


def test_read_image_names_the_file(tmp_path):
    files = _images(tmp_path)
    assert read_image_naming_file(str(files["good"])).size == (32, 64)  # PIL (w, h)
    for name in ("truncated", "text"):
        with pytest.raises(UnreadableImageError, match=str(files[name]).replace("\\", "\\\\")):
            read_image_naming_file(str(files[name]))


def test_fastreid_dataset_reads_through_the_named_reader(tmp_path):
    from fastreid.data.common import CommDataset

    files = _images(tmp_path)
    data = CommDataset([(str(files["truncated"]), 0, 0)], transform=None, relabel=False)
    with pytest.raises(UnreadableImageError, match="truncated.jpg"):
        data[0]


def test_check_images_tool_lists_unreadable_files(tmp_path, capsys):
    files = _images(tmp_path / "imgs")
    code = _tool().main(["--root", str(tmp_path / "imgs"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1
    assert str(files["truncated"]) in out and str(files["text"]) in out and str(files["good"]) not in out
    assert out.strip().splitlines()[-1].startswith("check_images files=3 unreadable=2 seconds=")


def test_check_images_tool_on_a_config(tmp_path, capsys, datasets_outside_the_repository):
    code = _tool().main(["--config-file", str(REPO / "configs" / "base" / "synthetic.yml"), "--no-progress",
                         "DATASETS.TESTS", '("SynthReIDA",)'])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0 and " unreadable=0 " in last


@pytest.mark.slow
def test_crash_in_final_evaluation_keeps_model_final(tmp_path, train_net_session, datasets_outside_the_repository):
    """Train on SynthReIDA, test on a Market-1501 copy with a truncated gallery image: the evaluation fails naming
    the image, and the trained model_final.pth is already on disk."""
    from plugins.config import setup_cfg
    from plugins.engine.loaders import dataset_items

    dataset_items(["SynthReIDA"], "train")  # generates domain A under the session's datasets root if needed
    root = Path(datasets_outside_the_repository)
    market = tmp_path / "datasets" / "Market-1501-v15.09.15"
    shutil.copytree(root / "synthreid" / "A", market, ignore=shutil.ignore_patterns("*.json", "*.mat"))
    broken = sorted((market / "bounding_box_test").glob("00[0-9][1-9]_*.jpg"))[3]  # not a junk (-1) box: kept
    broken.write_bytes(broken.read_bytes()[:200])
    shutil.copytree(root / "synthreid", tmp_path / "datasets" / "synthreid")
    out = tmp_path / "run"
    out.mkdir()  # fast-reid's default_setup (skipped in-process) would create it
    cfg_file = REPO / "configs" / "base" / "synthetic.yml"
    setup_cfg(str(cfg_file))  # the config itself is valid
    with train_net_session(str(tmp_path / "datasets")) as (main, _):
        with pytest.raises(UnreadableImageError, match=broken.name):
            main(cfg_file, "OUTPUT_DIR", str(out), "DATASETS.TESTS", '("Market1501",)', "SOLVER.MAX_EPOCH", "1",
                 "SOLVER.CHECKPOINT_PERIOD", "1", "TEST.EVAL_PERIOD", "1", "DATALOADER.NUM_WORKERS", "0",
                 "SOLVER.WARMUP_ITERS", "0")
    assert (out / "model_final.pth").is_file()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
