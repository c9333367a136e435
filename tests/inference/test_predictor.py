"""Predictor: builds the model as --eval-only does, loads strictly, and returns the evaluator's features."""
from __future__ import annotations

import pytest
import torch
from fastreid.evaluation.evaluator import DatasetEvaluator, inference_on_dataset

from inference_models import make_cfg, save_checkpoint
from plugins.engine.eval_only import EvalOnlyError
from plugins.engine.loaders import make_test_loader
from plugins.inference.gallery_index import list_image_items
from plugins.inference.predictor import Predictor
from plugins.registry import TRAINER_REGISTRY


class _Capture(DatasetEvaluator):
    """Collects the features fast-reid's evaluation loop hands to its evaluator."""

    def reset(self):
        self.feats = []

    def process(self, inputs, outputs):
        self.feats.append(outputs.to("cpu", torch.float32))

    def evaluate(self):
        return {}


@pytest.mark.parametrize("family", ["osnet", "vit", "clip"])
def test_features_equal_evaluator(family, gallery_dir, tmp_path):
    flip = False  # see test_flip_averages_raw_flipped_images
    cfg = make_cfg(family)
    weights = save_checkpoint(cfg, tmp_path / "model.pth")
    items = list_image_items(str(gallery_dir / "gallery"))
    predictor = Predictor(cfg, weights)
    feats = predictor.embed_items(items)

    # the evaluator's path: a freshly built model + the same strict loading + fast-reid's inference loop
    model = TRAINER_REGISTRY.get(cfg.PLUGINS.TRAINER).build_model(cfg)
    from plugins.engine.eval_only import load_eval_weights
    load_eval_weights(model, weights)
    loader, _ = make_test_loader(cfg, items, batch_size=4, num_workers=0)
    capture = _Capture()
    inference_on_dataset(model, loader, capture, flip_test=flip)
    expected = torch.cat(capture.feats)
    assert feats.shape == expected.shape == (len(items), feats.shape[1])
    torch.testing.assert_close(feats, expected, rtol=0, atol=1e-6)
    # single images in other batch sizes give the same features
    torch.testing.assert_close(predictor.embed_images([items[5][0]], [items[5][2]]), expected[5:6], rtol=1e-5,
                               atol=1e-5)


def test_weights_loaded_strictly(tmp_path):
    osnet = save_checkpoint(make_cfg("osnet"), tmp_path / "osnet.pth")
    with pytest.raises(EvalOnlyError, match="does not fit"):
        Predictor(make_cfg("vit"), osnet)
    with pytest.raises(ValueError, match="needs weights"):
        Predictor(make_cfg("osnet"), "")


def test_amp_close_to_fp32(gallery_dir, tmp_path):
    cfg = make_cfg("vit")
    weights = save_checkpoint(cfg, tmp_path / "vit.pth")
    items = list_image_items(str(gallery_dir / "query"))
    full = Predictor(cfg, weights).embed_items(items)
    half = Predictor(cfg, weights, amp=True).embed_items(items)
    assert half.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(full, half, dim=1)
    assert (cos > 0.99).all() and not torch.equal(full, half)


def test_text_features_from_text_tokens(tmp_path, repo_root):
    """A text-image model (DM-Adapter, tiny CLIP): captions -> text features in the image feature space."""
    from inference_models import SIZE
    from plugins.config import setup_cfg

    cfg = setup_cfg(str(repo_root / "configs" / "dmadapter" / "demo.yml"),
                    SIZE + ["MODEL.BACKBONE.CLIP.WEIGHTS", "", "MODEL.BACKBONE.PRETRAIN", "False"])
    predictor = Predictor(cfg, save_checkpoint(cfg, tmp_path / "dm.pth"))
    text = predictor.embed_text(["a woman in a red coat", "a man with a black backpack", "a child"])
    tokens = predictor.tokenize(["a child"])
    assert tokens.shape == (1, 77) and tokens[0, 0] == 49406
    with torch.no_grad():
        direct = predictor.model({"text_tokens": tokens})
    torch.testing.assert_close(text[2:], direct, rtol=1e-5, atol=1e-6)
    assert text.shape[0] == 3 and not torch.allclose(text[0], text[1])


def test_text_refused_by_image_only_model(tmp_path):
    cfg = make_cfg("osnet")
    predictor = Predictor(cfg, save_checkpoint(cfg, tmp_path / "osnet.pth"))
    with pytest.raises(ValueError, match="text_tokens"):
        predictor.embed_text(["a man"])


def test_flip_averages_raw_flipped_images(gallery_dir, tmp_path):
    """TEST.FLIP: the mean of the features of the raw images and of the raw images flipped (fast-reid's loop
    flips images its Baseline already normalised in place; the predictor does not, and leaves the batch as is)."""
    cfg = make_cfg("osnet", "TEST.FLIP.ENABLED", "True")
    predictor = Predictor(cfg, save_checkpoint(cfg, tmp_path / "m.pth"))
    images = torch.rand(3, 3, 64, 32) * 255
    kept = images.clone()
    feats = predictor({"images": images})
    assert torch.equal(images, kept)
    with torch.no_grad():
        plain = predictor.model({"images": images.clone()})
        flipped = predictor.model({"images": images.flip(dims=[3])})
    torch.testing.assert_close(feats, (plain + flipped) / 2, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(plain, flipped, atol=1e-4)


def test_attributes_reach_the_model(gallery_dir, tmp_path, repo_root):
    """MoSAIC (oracle router, tiny CLIP): reader extras' attribute vectors become batch['attributes'] and route the
    experts; the predictor's features are the model's features for the same batch."""
    from inference_models import SIZE
    from plugins.config import setup_cfg

    cfg = setup_cfg(str(repo_root / "configs" / "mosaic" / "demo.yml"),
                    SIZE + ["MODEL.BACKBONE.CLIP.WEIGHTS", "", "MODEL.BACKBONE.PRETRAIN", "False"])
    torch.manual_seed(0)
    model = TRAINER_REGISTRY.get(cfg.PLUGINS.TRAINER).build_model(cfg)
    with torch.no_grad():  # experts start at zero (LoRA B = 0): give them an effect
        for name, p in model.named_parameters():
            if "lora" in name.lower():
                p.normal_(0, 0.5)
    torch.save({"model": model.state_dict()}, tmp_path / "mosaic.pth")
    predictor = Predictor(cfg, str(tmp_path / "mosaic.pth"))
    num = predictor.model.schema.num_fields  # the dataset's attribute columns
    path, pid, cam = list_image_items(str(gallery_dir / "gallery"))[0]
    items = [(path, pid, cam, {"attributes": [0] * num}), (path, pid, cam, {"attributes": [1] * num})]
    feats = predictor.embed_items(items)
    assert not torch.allclose(feats[0], feats[1], atol=1e-4)  # the attributes chose other experts
    loader, _ = make_test_loader(predictor.cfg, items, batch_size=2, num_workers=0)
    batch = next(iter(loader))
    assert batch["attributes"].tolist() == [[0] * num, [1] * num]
    with torch.no_grad():
        torch.testing.assert_close(feats, predictor.model(batch), rtol=1e-5, atol=1e-6)


def test_modalities_reach_the_model(gallery_dir, tmp_path, repo_root):
    """DeMo (RGB/NI/TI, tiny CLIP): reader extras' modality files become batch['modalities']; the predictor's
    features are the model's features for the same batch, and change with the NI/TI images."""
    from inference_models import SIZE
    from plugins.config import setup_cfg

    cfg = setup_cfg(str(repo_root / "configs" / "demo" / "demo.yml"),
                    SIZE + ["MODEL.BACKBONE.CLIP.WEIGHTS", "", "MODEL.BACKBONE.PRETRAIN", "False"])
    predictor = Predictor(cfg, save_checkpoint(cfg, tmp_path / "demo.pth"))
    assert predictor.modality_names == ("RGB", "NI", "TI")
    a, b = [it[0] for it in list_image_items(str(gallery_dir / "gallery"))[:2]]
    items = [(a, 1, 0, {"modalities": {"RGB": a, "NI": a, "TI": a}}),
             (a, 1, 0, {"modalities": {"RGB": a, "NI": b, "TI": b}})]
    feats = predictor.embed_items(items)
    assert not torch.allclose(feats[0], feats[1], atol=1e-5)
    loader, _ = make_test_loader(predictor.cfg, items, batch_size=2, num_workers=0)
    batch = next(iter(loader))
    assert sorted(batch["modalities"]) == ["NI", "RGB", "TI"]
    with torch.no_grad():
        torch.testing.assert_close(feats, predictor.model(batch), rtol=1e-5, atol=1e-6)
