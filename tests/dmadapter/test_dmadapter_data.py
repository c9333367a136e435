"""DM-Adapter data: the procedural CUHK-PEDES-format reader (SynthPedesA..D), captions tokenised once, caption
queries without images, the test loader that never mixes captions and images, the text-image evaluator."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from plugins.data.datasets.synthetic_text import SynthPedesA, SynthPedesB
from plugins.data.synthetic import SynthConfig
from plugins.dmadapter.data import CaptionQueries, CaptionTokens, TextImageTestLoader
from plugins.evaluation.text_image import TextImageEvaluator
from plugins.modeling.backbones.clip import tokenize

from dmadapter_models import dm_cfg

SMALL = SynthConfig(train_ids=4, test_ids=4, images_per_id=2, num_cameras=2, junk=0, distractors=0)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synth_pedes"))


def test_reader_splits_and_items(small_root):
    val = SynthPedesA(root=small_root, config=SMALL, eval_split="val")
    test = SynthPedesA(root=small_root, config=SMALL, eval_split="test")
    assert len(val.train) == 4 * 2 * 2  # one item per (image, caption)
    assert all(isinstance(it[3]["caption"], str) and it[1].startswith("synthpedesa_") for it in val.train)
    assert len(val.gallery) == 2 * 2 and len(val.query) == 2 * 2 * 2
    assert {it[1] for it in val.gallery}.isdisjoint({it[1] for it in test.gallery})
    assert {it[1] for it in val.query} == {it[1] for it in val.gallery}
    other = SynthPedesB(root=small_root, config=SMALL)
    assert other.train[0][0] != val.train[0][0]
    with pytest.raises(ValueError, match="eval_split"):
        SynthPedesA(root=small_root, config=SMALL, eval_split="train")


def test_captions_are_tokenised_once_and_looked_up():
    caps = ["a man in a red coat", "a woman with a blue bag", "a man in a red coat"]
    tok = CaptionTokens(caps)
    assert len(tok) == 2 and tok.table.shape == (2, 77)
    assert torch.equal(tok(caps), tokenize(caps))
    assert torch.equal(tok(["never seen before"]), tokenize(["never seen before"]))
    long = " ".join(["word"] * 200)
    row = CaptionTokens([long])([long])[0]
    assert row[-1] == 49407 and row.argmax() == 76  # cut to the context and still ended by <end>


def test_queries_read_no_image_and_loader_never_mixes(small_root, tmp_path):
    data = SynthPedesA(root=small_root, config=SMALL, eval_split="test")
    q = CaptionQueries(data.query)[0]
    assert set(q) == {"text_tokens", "targets", "camids", "img_paths"}
    cfg = dm_cfg("TEST.IMS_PER_BATCH", "3", "DATALOADER.NUM_WORKERS", "0", "PLUGINS.DATA.TEXT", "True")
    loader = TextImageTestLoader(cfg, data.query, data.gallery)
    batches = list(loader)
    kinds = ["images" in b for b in batches]
    assert kinds == sorted(kinds) and kinds[0] is False and kinds[-1] is True  # captions first, then images
    assert all(("text_tokens" in b) != ("images" in b) for b in batches)
    assert sum(len(b["targets"]) for b in batches) == len(data.query) + len(data.gallery) == len(loader.dataset)


def test_text_image_evaluator_known_answer():
    ev = TextImageEvaluator()
    ev.reset()
    # caption 0 (id 0): nearest image is id 1, then id 0 -> rank 2; caption 1 (id 1): nearest is id 1
    ev.process({"text_tokens": None, "targets": torch.tensor([0, 1])}, torch.tensor([[1.0, 0.2], [0.0, 1.0]]))
    ev.process({"images": None, "targets": torch.tensor([1, 0, 2])},
               torch.tensor([[1.0, 0.5], [0.6, -0.5], [-1.0, 0.0]]))
    res = ev.evaluate()
    assert isinstance(res, OrderedDict)
    assert res["R1"] == pytest.approx(50.0) and res["R5"] == pytest.approx(100.0)
    assert res["mAP"] == pytest.approx(75.0) and res["mINP"] == pytest.approx(75.0)
    with pytest.raises(ValueError, match="caption and image"):
        only = TextImageEvaluator()
        only.process({"targets": torch.tensor([0])}, torch.ones(1, 2))
        only.evaluate()
