"""Official DM-Adapter checkpoint -> DMAdapter: key layout (ViT-B/16 shapes, 1,026 keys) and feature parity with an
independent re-implementation of the official forward (``dmadapter_official_reference.py``) on a small random model."""
from __future__ import annotations

import logging

import pytest
import torch

from plugins.dmadapter.convert import convert_official_state
from plugins.dmadapter.meta_arch import DMAdapter
from plugins.modeling.backbones.clip import CLIPImageEncoder, CLIPTextEncoder, build_clip_model
from plugins.modeling.backbones.clip.weights import load_state_strict

import dmadapter_official_reference as ref
from dmadapter_models import captions_batch, dm_cfg

SMALL = {"embed_dim": 64,
         "vision_cfg": {"image_size": [64, 32], "layers": 2, "width": 128, "head_width": 64, "patch_size": 16},
         "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2}}
SMALL_SHAPES = dict(width=128, layers=2, patch=16, grid=(4, 2), text_width=128, text_layers=2, embed=64)


def _small_model() -> DMAdapter:
    clip = build_clip_model(SMALL, image_size=(64, 32))
    return DMAdapter(image_encoder=CLIPImageEncoder(clip.visual), text_encoder=CLIPTextEncoder(clip),
                     pixel_mean=[0.0, 0.0, 0.0], pixel_std=[1.0, 1.0, 1.0]).eval()


def test_vitb16_official_layout_maps_onto_the_model():
    shapes = ref.official_key_shapes()
    assert len(shapes) == 1_026
    official = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    conv = convert_official_state(official)
    assert sorted(conv.dropped) == ref.expected_dropped()
    cfg = dm_cfg("MODEL.BACKBONE.CLIP.NAME", "ViT-B-16", "INPUT.SIZE_TRAIN", "[384, 128]",
                 "INPUT.SIZE_TEST", "[384, 128]")
    with torch.device("meta"):
        model = DMAdapter(cfg)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in conv.state.items()} == ours  # every key, every shape, nothing left over
    unused = sum(torch.Size(shapes[k]).numel() for k in ref.expected_dropped())
    assert unused == 395_776  # the official 16,065,304 trainable = our 15,669,528 + these


@pytest.mark.parametrize("prefix", [True, False])
def test_features_equal_the_official_forward(prefix, caplog):
    ckpt = ref.random_official_checkpoint(ref.official_key_shapes(**SMALL_SHAPES), seed=1, module_prefix=prefix)
    assert any(v.dtype == torch.float16 for v in ckpt["model"].values())  # mixed precision, as released
    with caplog.at_level(logging.INFO, logger="fastreid"):
        conv = convert_official_state(ckpt["model"], source="official.pth")
    assert "dropped 5 official parameters" in caplog.text
    assert all(v.dtype == torch.float32 for v in conv.state.values() if v.is_floating_point())
    model = _small_model()
    load_state_strict(model, conv.state, "official.pth")
    official = ref.official_state(ckpt["model"])
    torch.manual_seed(0)
    images = torch.randn(3, 3, 64, 32)
    tokens = captions_batch(3)
    with torch.no_grad():
        ours_img, ours_txt = model({"images": images}), model({"text_tokens": tokens})
        ref_img, ref_txt = ref.encode_image(official, images), ref.encode_text(official, tokens)
    assert (ours_img - ref_img).abs().max() <= 1e-4
    assert (ours_txt - ref_txt).abs().max() <= 1e-4
    # the experts matter here: the same model without its SMA output differs
    for b in model.blocks():
        b.scale = 0.0
    with torch.no_grad():
        assert (model({"images": images}) - ref_img).abs().max() > 1e-3


def test_a_foreign_checkpoint_fails_naming_the_key():
    with pytest.raises(KeyError, match="visual.conv1.weight"):
        convert_official_state({"visual.conv1.weight": torch.zeros(1)})


def test_convert_weights_tool(tmp_path, repo_root, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert_weights_dm", repo_root / "tools" / "convert_weights.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    ckpt = ref.random_official_checkpoint(ref.official_key_shapes(**SMALL_SHAPES), seed=2)
    src, dst = tmp_path / "official.pth", tmp_path / "ours.pth"
    torch.save(ckpt, src)
    assert tool.main(["--from", "dmadapter", "--input", str(src), "--output", str(dst)]) == 0
    out = capsys.readouterr().out
    assert "dropped 5 official parameters" in out and f"converted from=dmadapter keys=" in out.splitlines()[-1]
    state = torch.load(dst, map_location="cpu", weights_only=True)["model"]
    model = _small_model()
    load_state_strict(model, state, str(dst))
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert (model({"images": images}) - ref.encode_image(ref.official_state(ckpt["model"]), images)).abs().max() \
            <= 1e-4
