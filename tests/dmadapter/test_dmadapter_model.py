"""DM-Adapter model: golden parameter counts, zero-init == frozen CLIP, aux loss 4.0 at uniform routing, training
step and eval contract."""
from __future__ import annotations

import pytest
import torch
from fastreid.modeling import build_model

from plugins.dmadapter.meta_arch import DMAdapter
from plugins.dmadapter.sma import SMABlock
from plugins.layers.moe import SparseMixture
from plugins.modeling.backbones.clip import build_clip_model
from plugins.modeling.backbones.clip.tiny import TINY_CLIP_CONFIG

from dmadapter_models import captions_batch, dm_cfg, tiny_model


def _meta_vitb16(*opts):
    """ViT-B/16 at 384x128 built on the meta device (shapes only, no memory, no init cost)."""
    cfg = dm_cfg("MODEL.BACKBONE.CLIP.NAME", "ViT-B-16", "INPUT.SIZE_TRAIN", "[384, 128]",
                 "INPUT.SIZE_TEST", "[384, 128]", *opts)
    with torch.device("meta"):
        return DMAdapter(cfg)


def _trainable(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_golden_parameter_counts_vitb16():
    model = _meta_vitb16()
    assert _trainable(model) == 15_669_528  # official 16,065,304 minus its 395,776 unused parameters
    assert _trainable(model.image_blocks()[0]) == 901_441
    assert _trainable(model.text_blocks()[0]) == 404_353
    assert len(model.image_blocks()) == len(model.text_blocks()) == 12
    # frozen CLIP + 24 x 30 SMA tensors = the official 1,026 keys minus logit_scale, vision_param, text_param,
    # co_vision_param and v2i_proj.{weight,bias}
    assert len(model.state_dict()) == 1_021
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(".ln_3." not in n and ".sma." not in n for n in frozen)
    assert not any(p.requires_grad for p in model.image_encoder.visual.conv1.parameters())


def test_single_adapter_has_no_router_parameters():
    model = _meta_vitb16("DMADAPTER.NUM_EXPERTS", "1", "DMADAPTER.TOP_K", "1")
    block = model.image_blocks()[0]
    assert not isinstance(block.sma, SparseMixture)
    assert _trainable(block) == 2 * 768 + (768 * 96 + 96 + 96 * 768 + 768)


def test_fresh_model_equals_frozen_clip():
    """Zero-initialised up-projections: every SMA adds exactly 0, so the features are open_clip's own."""
    torch.manual_seed(0)
    model = tiny_model().eval()
    torch.manual_seed(0)
    reference = build_clip_model(TINY_CLIP_CONFIG, image_size=(64, 32)).eval()
    missing, unexpected = reference.load_state_dict(_clip_state(model), strict=False)
    assert missing == ["logit_scale"] and not unexpected
    images = torch.rand(3, 3, 64, 32) * 255
    tokens = captions_batch(3)
    with torch.no_grad():
        ours_img = model({"images": images})
        ours_txt = model({"text_tokens": tokens})
        ref_img = reference.encode_image((images - 127.5) / 127.5)
        ref_txt = reference.encode_text(tokens)
    assert torch.equal(ours_img, ref_img)
    assert torch.allclose(ours_txt, ref_txt, atol=1e-5)  # we run max(EOT)+1 positions, open_clip all 77
    # the SMA really ran: routing recorded in every block, and a non-zero expert changes the output
    assert all(b.routing is not None for b in model.blocks())
    with torch.no_grad():
        model.image_blocks()[0].sma.experts[0].up.weight.normal_()
        assert not torch.allclose(model({"images": images}), ref_img, atol=1e-4)


def _clip_state(model: DMAdapter) -> dict:
    """open_clip key names of the frozen towers inside a DMAdapter."""
    state = {}
    for k, v in model.state_dict().items():
        if ".ln_3." in k or ".sma." in k:
            continue
        if k.startswith("image_encoder."):
            state[k[len("image_encoder."):]] = v
        elif k.startswith("text_encoder."):
            state[k[len("text_encoder."):]] = v
    return state


def test_aux_loss_is_four_at_uniform_routing(deep_toy_model):
    """24 blocks x 6 experts x top-2 with all-zero router weights (uniform softmax): 0.5 * 24 * 2/6 = 4.0."""
    model = deep_toy_model.train()
    assert len(model.blocks()) == 24
    with torch.no_grad():
        for b in model.blocks():
            b.sma.router.gate.weight.zero_()
            b.sma.router.domain_gate.weight.zero_()
    batch = {"images": torch.rand(4, 3, 64, 32) * 255, "text_tokens": captions_batch(4),
             "targets": torch.tensor([0, 0, 1, 2])}
    losses = model(batch)
    assert losses["loss_aux"].item() == pytest.approx(4.0, abs=1e-5)


def test_aux_loss_averages_over_the_text_padding_too():
    """The official loss averages over all 77 text positions (padding included): the text pass runs all of them."""
    model = tiny_model().train()
    batch = {"images": torch.rand(2, 3, 64, 32) * 255, "text_tokens": captions_batch(2),
             "targets": torch.tensor([0, 1])}
    model(batch)
    assert all(b.routing.weights.shape[:2] == (2, 77) for b in model.text_blocks())
    assert all(b.routing.weights.shape[:2] == (2, 1 + 4 * 2) for b in model.image_blocks())


def test_training_step_and_eval_contract():
    model = tiny_model()
    batch = {"images": torch.rand(4, 3, 64, 32) * 255, "text_tokens": captions_batch(4),
             "targets": torch.tensor([0, 0, 1, 2])}
    model.train()
    losses = model(batch)
    assert set(losses) == {"loss_sdm", "loss_aux"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(".ln_3." in n or ".sma." in n for n, _ in trainable)
    assert not [n for n, p in trainable if p.grad is None]
    # the aux loss moves the routers, the SDM loss the expert down-projections only once an up-projection is
    # non-zero; the up-projections get a gradient from the start
    assert any(p.grad.abs().sum() > 0 for n, p in trainable if n.endswith("up.weight"))
    assert any(p.grad.abs().sum() > 0 for n, p in trainable if "router.gate" in n)
    model.eval()
    with torch.no_grad():
        assert model({"images": batch["images"]}).shape == (4, 32 * 4)
        assert model({"text_tokens": batch["text_tokens"]}).shape == (4, 32 * 4)


def test_without_aux_weight_there_is_no_aux_loss():
    model = tiny_model("DMADAPTER.AUX_WEIGHT", "0.0").train()
    batch = {"images": torch.rand(2, 3, 64, 32) * 255, "text_tokens": captions_batch(2),
             "targets": torch.tensor([0, 1])}
    assert set(model(batch)) == {"loss_sdm"}


def test_blocks_keep_open_clip_names():
    model = tiny_model()
    names = set(model.state_dict())
    assert "image_encoder.visual.transformer.resblocks.0.attn.in_proj_weight" in names
    assert "text_encoder.transformer.resblocks.3.mlp.c_fc.weight" in names
    assert "text_encoder.transformer.resblocks.3.sma.router.prompt" in names
    assert all(isinstance(b, SMABlock) for b in model.blocks())


def test_bad_config_fails_naming_the_key():
    with pytest.raises(ValueError, match="TOP_K"):
        tiny_model("DMADAPTER.TOP_K", "7")
    with pytest.raises(KeyError, match="DMADAPTER.ROUTER"):
        tiny_model("DMADAPTER.ROUTER", "NoSuchRouter")
