"""flip_test_normalisation: fast-reid's TEST.FLIP normalised the flipped batch twice (in-place preprocess_image)."""
import inspect

import torch
from fastreid.config import get_cfg
from fastreid.evaluation.evaluator import DatasetEvaluator, inference_on_dataset
from fastreid.modeling import build_model
from fastreid.modeling.meta_arch.baseline import Baseline

import plugins  # noqa: F401  (applies the runtime patches)
from plugins.compat import applied_patches
from plugins.compat.meta_arch import HOST_PREPROCESS, normalises_in_place, preprocess_image_out_of_place


def tiny_baseline():
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.DEPTH", "18x", "MODEL.BACKBONE.FEAT_DIM", 512,
                         "MODEL.BACKBONE.PRETRAIN", False, "MODEL.HEADS.NUM_CLASSES", 4,
                         "MODEL.PIXEL_MEAN", [120.0, 110.0, 100.0], "MODEL.PIXEL_STD", [60.0, 50.0, 40.0]])
    torch.manual_seed(0)
    return build_model(cfg).eval()


class OneBatch(list):
    """The loader interface ``inference_on_dataset`` reads: iteration and ``.dataset`` for its length."""

    @property
    def dataset(self):
        return [None] * sum(len(b["images"]) for b in self)


class Collect(DatasetEvaluator):
    def reset(self):
        self.outputs = []

    def process(self, inputs, outputs):
        self.outputs.append(outputs)

    def evaluate(self):
        return torch.cat(self.outputs)


def test_host_normalises_in_place_and_patch_is_applied():
    from fastreid.modeling.meta_arch import baseline

    # the host's own source has the in-place normalisation the patch exists for
    assert "images.sub_(" in inspect.getsource(baseline)
    assert applied_patches().get("flip_test_normalisation") is True
    assert Baseline.preprocess_image is preprocess_image_out_of_place
    assert not normalises_in_place(Baseline.preprocess_image)


def flip_features(model, images):
    return inference_on_dataset(model, OneBatch([{"images": images.clone()}]), Collect(), flip_test=True)


def test_host_flip_test_is_wrong_and_patched_is_right(monkeypatch):
    model = tiny_baseline()
    images = torch.rand(3, 3, 64, 32) * 255
    with torch.no_grad():
        expected = (model({"images": images.clone()}) + model({"images": images.flip(dims=[3])})) / 2
    monkeypatch.setattr(Baseline, "preprocess_image", HOST_PREPROCESS["Baseline"])
    host = flip_features(model, images)
    assert (host - expected).abs().max() > 1e-2  # the flipped half normalised twice
    monkeypatch.undo()
    torch.testing.assert_close(flip_features(model, images), expected, rtol=1e-5, atol=1e-5)


def test_flip_test_averages_the_image_and_its_mirror():
    model = tiny_baseline()
    images = torch.rand(3, 3, 64, 32) * 255
    with torch.no_grad():
        expected = (model({"images": images.clone()}) + model({"images": images.flip(dims=[3])})) / 2
    batch = {"images": images.clone(), "targets": torch.zeros(3, dtype=torch.long)}
    evaluator = Collect()
    got = inference_on_dataset(model, OneBatch([batch]), evaluator, flip_test=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the batch itself is not normalised by the forward: it is the (flipped) raw 0-255 images
    torch.testing.assert_close(batch["images"], images.flip(dims=[3]))
