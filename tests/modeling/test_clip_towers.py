"""The open_clip CLIP towers: known answers (positional-embedding resampling, tokenizer template positions),
equivalence with open_clip's own forward, SIE on the CLS token before the positional embedding, local weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file

from plugins.modeling.backbones.clip import (CLIPImageEncoder, CLIPTextEncoder, build_clip_model, load_clip_weights,
                                             placeholder_positions, read_state_dict, resize_positional_embedding,
                                             tokenize)

SMALL = {"embed_dim": 32, "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 16,
                                         "head_width": 32},
         "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


@pytest.fixture(scope="module")
def small_clip():
    torch.manual_seed(0)
    return build_clip_model(SMALL, image_size=(64, 32)).double().eval()


def test_template_ids_and_positions():
    ids = tokenize("A photo of a X X X X person.")[0]
    assert ids[:12].tolist() == [49406, 320, 1125, 539, 320, 343, 343, 343, 343, 2533, 269, 49407]
    assert ids[12:].eq(0).all() and ids.shape == (77,)
    assert placeholder_positions("A photo of a X X X X person.") == [5, 6, 7, 8]
    assert int(ids.argmax()) == 11  # EOT: the feature position of the prompt
    with pytest.raises(ValueError, match="does not occur"):
        placeholder_positions("a person walking")


def test_constant_field_stays_constant_and_cls_kept():
    pos = torch.full((1 + 14 * 14, 8), 0.25)
    pos[0] = torch.arange(8.0)
    out = resize_positional_embedding(pos, (16, 8))
    assert out.shape == (1 + 16 * 8, 8)
    assert torch.equal(out[0], torch.arange(8.0))
    assert torch.allclose(out[1:], torch.full((128, 8), 0.25))


def test_bilinear_half_pixel_known_values():
    # a 1x2 grid [0, 1] -> 1x4 with align_corners=False: centres at -0.25, 0.25, 0.75, 1.25 -> clamp/interpolate
    pos = torch.tensor([[9.0], [0.0], [1.0]])
    out = resize_positional_embedding(pos, (1, 4), old_grid=(1, 2))
    assert out[:, 0].tolist() == [9.0, 0.0, 0.25, 0.75, 1.0]
    # bilinear, not open_clip's bicubic + antialias: differs from F.interpolate(bicubic) on a random field
    rnd = torch.randn(1 + 14 * 14, 4)
    ours = resize_positional_embedding(rnd, (16, 8))
    grid = rnd[1:].reshape(1, 14, 14, 4).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(16, 8), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).reshape(128, 4)
    assert torch.equal(ours[1:], ref)


def test_quick_gelu_and_grid(small_clip):
    assert any(isinstance(m, QuickGELU) for m in small_clip.modules())
    assert tuple(small_clip.visual.grid_size) == (4, 2)
    assert small_clip.visual.positional_embedding.shape == (9, 64)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        build_clip_model(SMALL, image_size=(60, 32))


def test_image_encoder_equals_open_clip(small_clip):
    enc = CLIPImageEncoder(small_clip.visual)
    x = torch.randn(3, 3, 64, 32, dtype=torch.float64)
    out = enc(x, return_blocks=(0, 1))
    assert torch.allclose(out.proj, small_clip.encode_image(x), atol=1e-12)
    assert out.tokens.shape == (3, 9, 64) and out.cls.shape == (3, 64) and out.proj.shape == (3, 32)
    assert torch.equal(out.blocks[1][:, 0], out.cls_pre_ln)
    assert torch.equal(out.blocks[0][:, 0], out.cls_penultimate)
    assert torch.allclose(small_clip.visual.ln_post(out.cls_pre_ln), out.cls, atol=1e-12)


def test_sie_on_cls_before_positional_embedding(small_clip):
    enc = CLIPImageEncoder(small_clip.visual, num_cameras=3, sie_coef=3.0).double()
    x = torch.randn(2, 3, 64, 32, dtype=torch.float64)
    camids = torch.tensor([2, 0])
    v = small_clip.visual
    patches = v.conv1(x).flatten(2).transpose(1, 2)
    cls = v.class_embedding.expand(2, 1, -1) + 3.0 * enc.camera_embed[camids].unsqueeze(1)
    h = v.ln_pre(torch.cat([cls, patches], 1) + v.positional_embedding)
    ref = v.ln_post(v.transformer(h)[:, 0]) @ v.proj
    assert torch.allclose(enc(x, camids).proj, ref, atol=1e-12)
    assert torch.allclose(enc(x, use_sie=False).proj, small_clip.encode_image(x), atol=1e-12)
    with pytest.raises(ValueError, match="camera id 3 outside"):
        enc(x, torch.tensor([3, 0]))
    with pytest.raises(ValueError, match="no camera ids"):
        enc(x)
    both = CLIPImageEncoder(small_clip.visual, num_cameras=3, num_views=2)
    assert both.camera_embed.shape == (6, 64)
    assert both.sie_rows(torch.tensor([2, 1]), torch.tensor([1, 0])).tolist() == [5, 2]


def test_text_encoder_equals_open_clip_and_embedding_path(small_clip):
    enc = CLIPTextEncoder(small_clip)
    tokens = tokenize(["a man in a red shirt", "a woman carrying a bag"])
    feats = enc(tokens)
    assert torch.allclose(feats, small_clip.encode_text(tokens), atol=1e-12)
    assert torch.allclose(enc.forward_embeddings(enc.embed(tokens), tokens.argmax(-1)), feats, atol=1e-12)
    # the padding after EOT never reaches the feature: changing it changes nothing (only EOT+1 positions run)
    emb = enc.embed(tokens)
    emb[:, 20:] = torch.randn_like(emb[:, 20:])
    assert torch.allclose(enc.forward_embeddings(emb, tokens.argmax(-1)), feats, atol=1e-12)


def test_local_weights_round_trip_and_errors(tmp_path):
    torch.manual_seed(1)
    src = build_clip_model(SMALL)  # 224: 14x14 grid
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    state["input_resolution"] = torch.tensor(224)  # OpenAI archive metadata, dropped
    torch.save({"state_dict": state}, tmp_path / "ckpt.pt")
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    assert set(read_state_dict(str(tmp_path / "ckpt.pt"))) == set(src.state_dict())
    for name in ("ckpt.pt", "w.safetensors"):
        dst = build_clip_model(SMALL, image_size=(64, 32))
        load_clip_weights(dst, str(tmp_path / name))
        assert torch.equal(dst.visual.conv1.weight, src.visual.conv1.weight)
        assert torch.equal(dst.visual.positional_embedding,
                           resize_positional_embedding(src.visual.positional_embedding, (4, 2)))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_clip_weights(build_clip_model(SMALL), str(tmp_path / "nope.pt"))
    bad = dict(src.state_dict())
    bad.pop("ln_final.weight")
    bad["visual.extra"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(KeyError, match=r"bad\.pt.*ln_final\.weight.*visual\.extra"):
        load_clip_weights(build_clip_model(SMALL), str(tmp_path / "bad.pt"))
