"""CLIPReID: golden parameter counts (clip.md), what trains in each stage (gradients of a real step), the loss
terms and the eval contract (images -> test features, text_tokens -> text features)."""
from __future__ import annotations

import pytest
import torch
from fastreid.modeling import build_model
from fastreid.utils.events import EventStorage

from plugins.modeling.meta_arch.clipreid import CLIPReID
from plugins.engine.clipreid_trainers import text_feature_bank
from plugins.config import setup_cfg
from plugins.modeling.backbones.clip import tokenize


def test_golden_counts_vit_b16_751_ids_sie():
    cfg = setup_cfg("configs/clipreid/market.yml", ["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", "False",
                                                     "MODEL.HEADS.NUM_CLASSES", "751"])
    model = build_model(cfg)
    official = sum(p.numel() for n, p in model.named_parameters() if n != "text_encoder.token_embedding.weight")
    assert official == 126_778_112  # the official model, which does not keep the token embedding table
    model.train_image_encoder()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 87_107_584
    model.train_prompts_only()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 1_538_048 == 751 * 4 * 512
    assert model.image_encoder.visual.positional_embedding.shape == (129, 768)
    assert model.prompt_learner.token_prefix.shape == (1, 5, 512)
    assert model.prompt_learner.token_suffix.shape == (1, 68, 512)


def _batch(n=8, ids=4):
    torch.manual_seed(0)
    return {"images": torch.rand(n, 3, 64, 32) * 255, "targets": torch.arange(n) % ids,
            "camids": torch.arange(n) % 3}


def test_stage2_step_gradients(tiny_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train_image_encoder()
    model.set_text_features(text_feature_bank(model))
    model.train()
    with EventStorage():
        losses = model(_batch())
    assert set(losses) == {"loss_id", "loss_triplet", "loss_i2t"}
    sum(losses.values()).backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert got == trainable  # every trainable parameter receives a gradient...
    assert not any(n.startswith(("text_encoder.", "prompt_learner.")) or n.endswith("bottleneck.bias")
                   or n.endswith("bottleneck_proj.bias") for n in got)  # ...and nothing frozen does
    assert "image_encoder.camera_embed" in got


def test_stage1_trains_only_prompts(tiny_cfg):
    model = build_model(tiny_cfg()).train_prompts_only()
    feats = model.prompt_text_features(torch.tensor([0, 1, 1]))
    feats.sum().backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    assert got == {"prompt_learner.cls_ctx"}


def test_eval_contract(tiny_cfg):
    model = build_model(tiny_cfg()).eval()
    batch = _batch(4)
    with torch.no_grad():
        feats = model(batch)
        assert feats.shape == (4, model.image_encoder.width + model.image_encoder.embed_dim)
        out = model.image_encoder(model.normalize(batch["images"]), batch["camids"])
        assert torch.allclose(feats, torch.cat([out.cls, out.proj], 1))
        tokens = tokenize(["a man in a red shirt"])
        assert torch.allclose(model({"text_tokens": tokens}), model.text_encoder(tokens))
        assert torch.equal(batch["images"], _batch(4)["images"])  # never normalised in place
    after = build_model(tiny_cfg("CLIPREID.NECK_FEAT", "after")).eval()
    with torch.no_grad():
        out = after.image_encoder(after.normalize(batch["images"]), batch["camids"])
        assert torch.allclose(after(batch), torch.cat([after.bottleneck(out.cls), after.bottleneck_proj(out.proj)], 1))


def test_i2t_without_text_features_is_an_error(tiny_cfg):
    model = build_model(tiny_cfg()).train()
    with pytest.raises(RuntimeError, match="set_text_features"), EventStorage():
        model(_batch())
    no_i2t = build_model(tiny_cfg("CLIPREID.I2T_WEIGHT", "0.0")).train()
    with EventStorage():
        assert set(no_i2t(_batch())) == {"loss_id", "loss_triplet"}


def test_loss_values_by_hand(tiny_cfg):
    """loss_i2t = w * CE_ls(proj @ T^T) with torch's label smoothing ((1 - eps) one-hot + eps / C)."""
    model = build_model(tiny_cfg("CLIPREID.I2T_WEIGHT", "2.0")).train_image_encoder()
    model.set_text_features(torch.randn(4, model.image_encoder.embed_dim))
    model.train()
    batch = _batch()
    with EventStorage():
        losses = model(batch)
    model.eval()  # same weights; recompute the projected CLS (train-mode image tower has no dropout here)
    with torch.no_grad():
        proj = model.image_encoder(model.normalize(batch["images"]), batch["camids"]).proj
        logp = torch.log_softmax(proj @ model.text_features.t(), 1)
        target = torch.full((8, 4), 0.1 / 4).scatter(1, batch["targets"][:, None], 0.9 + 0.1 / 4)
        expected = 2.0 * (-(target * logp).sum(1).mean())
    assert losses["loss_i2t"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert isinstance(model, CLIPReID)
