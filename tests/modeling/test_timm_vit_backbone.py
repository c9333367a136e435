"""timm ViT backbone in fast-reid: 129 tokens at 256x128, (B, D, 1, 1) output, local weights with pos-embed
resampling, SIE camera embedding through CameraAwareBaseline."""
import pytest
import timm
import torch
from fastreid.config import get_cfg
from fastreid.modeling import build_model
from fastreid.utils.events import EventStorage
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from plugins.config import add_plugins_config


def tiny_cfg(**extra):
    cfg = add_plugins_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "CameraAwareBaseline"
    cfg.MODEL.BACKBONE.NAME = "build_timm_vit_backbone"
    cfg.MODEL.BACKBONE.TIMM_VIT.NAME = "vit_tiny_patch16_224"
    cfg.MODEL.BACKBONE.FEAT_DIM = 192
    cfg.MODEL.HEADS.NUM_CLASSES = 5
    cfg.MODEL.HEADS.WITH_BNNECK = True
    cfg.MODEL.LOSSES.NAME = ("CrossEntropyLoss", "TripletLoss")
    for k, v in extra.items():
        cfg.merge_from_list([k, v])
    return cfg


def batch(n=4):
    torch.manual_seed(0)
    return {"images": torch.rand(n, 3, 256, 128) * 255, "targets": torch.tensor([0, 0, 1, 1][:n]),
            "camids": torch.tensor([0, 1, 2, 0][:n])}


@pytest.mark.slow  # ViT-Ti forward + backward at 256x128: ~10-40 s on 2 busy cores
def test_train_and_eval_forward_and_tokens():
    model = build_model(tiny_cfg())
    assert model.backbone.vit.pos_embed.shape == (1, 129, 192)
    # SIE off: the backbone takes camids but does not use them, so the meta-architecture does not pass them
    assert not model.backbone_takes_camids and model.backbone.sie_embed is None
    with EventStorage():  # fast-reid logs the training accuracy into the event storage
        losses = model(batch())
    assert set(losses) == {"loss_cls", "loss_triplet"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.vit.blocks[0].attn.qkv.weight.grad is not None
    model.eval()
    with torch.no_grad():
        feats = model(batch())
        out = model.backbone(torch.rand(2, 3, 256, 128))
    assert feats.shape == (4, 192) and out.shape == (2, 192, 1, 1)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_pretrained_224_file_resampled(tmp_path, suffix):
    torch.manual_seed(1)
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False)  # 14x14 grid + 1000-class head
    path = str(tmp_path / f"w{suffix}")
    if suffix == ".safetensors":
        save_file(src.state_dict(), path)
    else:
        torch.save({"model": src.state_dict()}, path)
    model = build_model(tiny_cfg(**{"MODEL.BACKBONE.PRETRAIN": True, "MODEL.BACKBONE.PRETRAIN_PATH": path}))
    vit = model.backbone.vit
    assert torch.equal(vit.blocks[3].mlp.fc1.weight, src.blocks[3].mlp.fc1.weight)
    expected = resample_abs_pos_embed(src.pos_embed, new_size=(16, 8), num_prefix_tokens=1)
    assert torch.allclose(vit.pos_embed, expected)


def test_config_errors():
    with pytest.raises(ValueError, match="PRETRAIN_PATH is empty"):
        build_model(tiny_cfg(**{"MODEL.BACKBONE.PRETRAIN": True}))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_model(tiny_cfg(**{"MODEL.BACKBONE.PRETRAIN": True, "MODEL.BACKBONE.PRETRAIN_PATH": "/nope.pth"}))
    with pytest.raises(ValueError, match="FEAT_DIM"):
        build_model(tiny_cfg(**{"MODEL.BACKBONE.FEAT_DIM": 768}))
    with pytest.raises(ValueError, match="IMG_SIZE"):
        build_model(tiny_cfg(**{"INPUT.SIZE_TRAIN": [384, 128]}))


def test_sie_camera_embedding_uses_camids():
    model = build_model(tiny_cfg(**{"MODEL.BACKBONE.TIMM_VIT.NUM_CAMERAS": 3})).eval()
    assert model.backbone_takes_camids
    b = batch()
    b2 = dict(b, images=b["images"].clone(), camids=torch.tensor([1, 1, 2, 0]))
    with torch.no_grad():
        f1, f2 = model(dict(b, images=b["images"].clone())), model(b2)
    assert not torch.allclose(f1[0], f2[0]) and torch.allclose(f1[2:], f2[2:], atol=1e-5)
    with pytest.raises(ValueError, match="NUM_CAMERAS"):
        model(dict(b, images=b["images"].clone(), camids=torch.tensor([0, 1, 2, 3])))
