"""CLIPReID reproduces the official CLIP-ReID stage-2 model: random official-layout checkpoints are converted with
``plugins/clipreid/convert.py`` (and ``tools/convert_weights.py``) and our features compared with
``official_reference.py``, an independent plain-torch re-implementation of the official forward.

The acceptance bar: the test feature equals the official one to <= 1e-4 max abs after L2 normalisation on the same
input (measured ~1e-7; ~1e-6 before normalisation; fp32 on CPU). The official model sees ``(x / 255 - 0.5) / 0.5``
(ToTensor + Normalize 0.5 / 0.5); ours sees fast-reid's 0-255 batch with PIXEL_MEAN = PIXEL_STD = 127.5.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from fastreid.modeling import build_model
from fastreid.utils.checkpoint import Checkpointer
from plugins.clipreid.convert import TOKEN_EMBEDDING_KEY, convert_official_state, map_official_key
from plugins.modeling.meta_arch.clipreid import CLIPReID
from plugins.config import import_methods, setup_cfg
from plugins.modeling.backbones.clip import (CLIPImageEncoder, CLIPTextEncoder, build_clip_model, read_state_dict,
                                             tokenize)
from plugins.modeling.backbones.clip.weights import load_state_strict

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TOL = 1e-4  # max abs after L2 normalisation


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    return module


ref = _load("clipreid_official_reference", HERE / "official_reference.py")
tool = _load("clipreid_convert_weights_tool", REPO / "tools" / "convert_weights.py")
import_methods()

# Small official models: vision 64 wide (2 heads), 2 blocks, 64x32 input (4x2 grid); text 32 wide, 2 blocks.
SMALL = ref.OfficialDims(width=64, layers=2, heads=2, patch=16, h_res=4, w_res=2, embed_dim=32, text_width=32,
                         text_layers=2, text_heads=2, num_classes=5, camera_num=3)
SMALL_NO_SIE = dataclasses.replace(SMALL, sie_camera=False)
# The shapes of MODEL.BACKBONE.CLIP.NAME "tiny" (plugins/modeling/backbones/clip/tiny.py): buildable from a config.
TINY = ref.OfficialDims(width=128, layers=4, heads=4, patch=16, h_res=8, w_res=4, embed_dim=128, text_width=128,
                        text_layers=4, text_heads=4, num_classes=5, camera_num=3)


def open_clip_config(d) -> dict:
    """open_clip's model config of official dims ``d``."""
    return {"embed_dim": d.embed_dim,
            "vision_cfg": {"image_size": list(d.image_size), "layers": d.layers, "width": d.width,
                           "head_width": d.width // d.heads, "patch_size": d.patch},
            "text_cfg": {"context_length": d.context_length, "vocab_size": 49408, "width": d.text_width,
                         "heads": d.text_heads, "layers": d.text_layers}}


def our_model(d, state, *, sie_coe: float, neck_feat: str, quick_gelu: bool = True) -> CLIPReID:
    """CLIPReID built from its constructor (a custom open_clip config dict) with ``state`` loaded strictly."""
    clip = build_clip_model(open_clip_config(d), image_size=d.image_size, quick_gelu=quick_gelu)
    encoder = CLIPImageEncoder(clip.visual, num_cameras=d.camera_num if d.sie_camera else 0, sie_coef=sie_coe)
    model = CLIPReID(image_encoder=encoder, text_encoder=CLIPTextEncoder(clip), num_classes=d.num_classes,
                     pixel_mean=[127.5] * 3, pixel_std=[127.5] * 3, neck_feat=neck_feat)
    load_state_strict(model, state, "converted official checkpoint")
    return model.eval()


def normalised_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((F.normalize(a.float(), dim=1) - F.normalize(b.float(), dim=1)).abs().max())


def eval_batch(d, n: int = 4, seed: int = 1) -> dict:
    """A fast-reid eval batch: 0-255 images, targets, camera ids, paths."""
    g = torch.Generator().manual_seed(seed)
    h, w = d.image_size
    return {"images": torch.randint(0, 256, (n, 3, h, w), generator=g).float(),
            "targets": torch.arange(n) % d.num_classes, "camids": torch.arange(n) % max(d.camera_num, 1),
            "img_paths": [f"img_{i}.jpg" for i in range(n)]}


def official_input(images: torch.Tensor) -> torch.Tensor:
    """What the official test transform feeds: ToTensor (x / 255) then Normalize(0.5, 0.5)."""
    return (images / 255.0 - 0.5) / 0.5


@pytest.fixture(scope="module", params=[SMALL, SMALL_NO_SIE], ids=["sie", "no_sie"])
def small(request):
    d = request.param
    state, token_embedding = ref.random_official_state(d, seed=0)
    return d, state, token_embedding, convert_official_state(state, token_embedding=token_embedding)


def test_every_official_key_maps_once(small):
    d, state, _, conv = small
    assert all(map_official_key(k) for k in state)
    assert len({map_official_key(k) for k in state}) == len(state)
    assert len(conv.state) == len(state) + 1 and conv.has_token_embedding
    assert ("cv_embed" in state) == d.sie_camera
    assert conv.info.num_classes == d.num_classes and conv.info.num_patches == d.h_res * d.w_res


def test_grid_guess_of_reid_inputs():
    info = dataclasses.replace(convert_official_state(ref.random_official_state(SMALL)[0]).info, patch_size=16)
    assert [dataclasses.replace(info, num_patches=n).guess_grid() for n in (128, 192, 196, 7)] == \
        [(16, 8), (24, 8), None, None]


@pytest.mark.parametrize("neck_feat", ["before", "after"])
@pytest.mark.parametrize("sie_coe", [3.0, 1.0])
def test_small_test_features_match_official(small, sie_coe, neck_feat):
    d, state, token_embedding, conv = small
    official = ref.build_official(d, state, token_embedding, sie_coe=sie_coe, neck_feat=neck_feat)
    ours = our_model(d, conv.state, sie_coe=sie_coe, neck_feat=neck_feat)
    batch = eval_batch(d)
    x = official_input(batch["images"])
    cams = batch["camids"] if d.sie_camera else None
    with torch.no_grad():
        expected = official(x, cam_label=cams)
        got = ours(batch)
        diff = normalised_diff(got, expected)
        print(f"\n{'SIE' if d.sie_camera else 'no SIE'} coef {sie_coe} neck {neck_feat}: test feature max abs "
              f"after L2 norm {diff:.2e} (raw {float((got - expected).abs().max()):.2e})")
        assert got.shape == (4, d.width + d.embed_dim)
        assert diff <= TOL
        # the other outputs the official forward uses: x11 (triplet input), stage-1 image feature (no SIE)
        out = ours.image_encoder(ours.normalize(batch["images"]), cams)
        x11 = official.image_encoder(x, None if cams is None else sie_coe * official.cv_embed[cams])[0][:, 0]
        assert float((out.cls_penultimate - x11).abs().max()) <= TOL
        assert normalised_diff(ours.prompt_image_features(batch["images"]), official(x, get_image=True)) <= TOL
        if d.sie_camera:  # the check is sensitive to the SIE term: another camera moves the feature
            other = official(x, cam_label=(cams + 1) % d.camera_num)
            assert normalised_diff(other, expected) > 100 * TOL


def test_small_prompt_and_caption_text_features_match_official(small):
    d, state, token_embedding, conv = small
    official = ref.build_official(d, state, token_embedding)
    ours = our_model(d, conv.state, sie_coe=3.0, neck_feat="before")
    assert torch.equal(tokenize("A photo of a X X X X person."), ref.tokenized_template())
    labels = torch.tensor([0, 3, 4, 3])
    tokens = tokenize(["A photo of a X X X X person.", "a man in a red coat walking", "a woman with a bag"])
    with torch.no_grad():
        got, expected = ours.prompt_text_features(labels), official(label=labels, get_text=True)
        got_tok = ours({"text_tokens": tokens})
        expected_tok = ref.encode_text(official.text_encoder, token_embedding, tokens)
    diff, diff_tok = float((got - expected).abs().max()), float((got_tok - expected_tok).abs().max())
    print(f"\nprompt text features max abs {diff:.2e}; caption text features max abs {diff_tok:.2e}")
    assert diff <= TOL and normalised_diff(got, expected) <= TOL
    assert diff_tok <= TOL


def test_parity_check_detects_gelu():
    """The bar is meaningful: nn.GELU in place of QuickGELU is caught on the same weights."""
    state, token_embedding = ref.random_official_state(SMALL, seed=0)
    official = ref.build_official(SMALL, state, token_embedding)
    converted = convert_official_state(state, token_embedding=token_embedding).state
    gelu = our_model(SMALL, converted, sie_coe=3.0, neck_feat="before", quick_gelu=False)
    batch = eval_batch(SMALL)
    with torch.no_grad():
        diff = normalised_diff(gelu(batch), official(official_input(batch["images"]), cam_label=batch["camids"]))
    print(f"\nnn.GELU instead of QuickGELU: max abs after L2 norm {diff:.2e}")
    assert diff > 5 * TOL


@pytest.mark.slow
def test_vit_b16_official_checkpoint_through_the_tool(tmp_path, capsys):
    """The real size and the real path: a random official ViT-B/16 checkpoint (256x128, 751 identities, 6 cameras,
    316 keys) -> tools/convert_weights.py with configs/clipreid/market.yml -> fast-reid's Checkpointer, as
    ``tools/train_net.py --eval-only MODEL.WEIGHTS`` loads it -> the official features (SIE_COE 1.0 of the yml)."""
    d = ref.VIT_B16
    state, token_embedding = ref.random_official_state(d, seed=0)
    assert len(state) == 316
    official_file, ours_file = tmp_path / "official.pth", tmp_path / "ours.pth"
    torch.save(state, official_file)
    config = str(REPO / "configs" / "clipreid" / "market.yml")
    assert tool.main(["--from", "clipreid", "--input", str(official_file), "--output", str(ours_file),
                      "--config-file", config]) == 0
    printed = capsys.readouterr().out
    assert "set in the evaluation config or on the command line: MODEL.HEADS.NUM_CLASSES 751\n" in printed
    assert "16x8 + CLS" in printed and printed.strip().endswith(f"keys=316 output={ours_file}")
    del state

    cfg = setup_cfg(config, ["MODEL.HEADS.NUM_CLASSES", "751", "MODEL.DEVICE", "cpu",
                             "MODEL.BACKBONE.PRETRAIN", "False"])
    assert cfg.MODEL.BACKBONE.SIE_COE == 1.0 and cfg.MODEL.BACKBONE.CLIP.NUM_CAMERAS == 6
    ours = build_model(cfg)
    Checkpointer(ours).load(str(ours_file))
    ours.eval()
    official = ref.build_official(d, torch.load(official_file, weights_only=True), token_embedding, sie_coe=1.0)
    batch = eval_batch(d, n=2)
    x = official_input(batch["images"])
    with torch.no_grad():
        for neck_feat in ("before", "after"):
            official.neck_feat = ours.neck_feat = neck_feat
            diff = normalised_diff(ours(batch), official(x, cam_label=batch["camids"]))
            print(f"\nViT-B/16 SIE 1.0 neck {neck_feat}: test feature max abs after L2 norm {diff:.2e}")
            assert diff <= TOL
        labels = torch.tensor([0, 750])
        diff = float((ours.prompt_text_features(labels) - official(label=labels, get_text=True)).abs().max())
        print(f"ViT-B/16 prompt text features max abs {diff:.2e}")
        assert diff <= TOL


# --- tools/convert_weights.py ------------------------------------------------------------------------------------

TINY_YAML = """MODEL:
  META_ARCHITECTURE: CLIPReID
  DEVICE: cpu
  PIXEL_MEAN: [127.5, 127.5, 127.5]
  PIXEL_STD: [127.5, 127.5, 127.5]
  BACKBONE:
    PRETRAIN: False
    SIE_COE: 3.0
    CLIP:
      NAME: tiny
INPUT:
  SIZE_TRAIN: [128, 64]
  SIZE_TEST: [128, 64]
CLIPREID:
  NECK_FEAT: after
"""


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """An official checkpoint of the tiny CLIP's shapes saved as DataParallel would (``module.``), the CLIP weights
    holding its token embedding, and an evaluation config."""
    root = tmp_path_factory.mktemp("clipreid_convert")
    state, token_embedding = ref.random_official_state(TINY, seed=3)
    torch.save({"module." + k: v for k, v in state.items()}, root / "official.pth")
    save_file({"token_embedding.weight": token_embedding}, str(root / "clip.safetensors"))
    (root / "tiny.yml").write_text(TINY_YAML)
    return root, state, token_embedding


def test_convert_clipreid_cli_end_to_end(tiny_files, tmp_path, capsys):
    root, state, token_embedding = tiny_files
    out = tmp_path / "ours.pth"
    assert tool.main(["--from", "clipreid", "--input", str(root / "official.pth"), "--output", str(out),
                      "--config-file", str(root / "tiny.yml"), "--clip", str(root / "clip.safetensors")]) == 0
    printed = capsys.readouterr().out
    assert printed.strip().splitlines()[-1] == f"converted from=clipreid keys={len(state) + 1} output={out}"
    assert "MODEL.HEADS.NUM_CLASSES 5" in printed and "MODEL.BACKBONE.CLIP.NUM_CAMERAS 3" in printed
    assert "loaded strictly" in printed and "prompt prefix/suffix max abs diff 0.00e+00" in printed
    checkpoint = torch.load(out, weights_only=True)
    assert set(checkpoint) == {"model"} and all(torch.is_tensor(v) for v in checkpoint["model"].values())

    # what tools/train_net.py --eval-only does with MODEL.WEIGHTS
    cfg = setup_cfg(str(root / "tiny.yml"), ["MODEL.HEADS.NUM_CLASSES", "5", "MODEL.BACKBONE.CLIP.NUM_CAMERAS", "3"])
    model = build_model(cfg)
    Checkpointer(model).load(str(out))
    model.eval()
    official = ref.build_official(TINY, state, token_embedding, sie_coe=3.0, neck_feat="after")
    batch = eval_batch(TINY)
    tokens = tokenize(["a person in a blue shirt"])
    with torch.no_grad():
        diff = normalised_diff(model(batch), official(official_input(batch["images"]), cam_label=batch["camids"]))
        diff_text = float((model({"text_tokens": tokens})
                           - ref.encode_text(official.text_encoder, token_embedding, tokens)).abs().max())
    print(f"\ntiny (tool + config + Checkpointer): test feature max abs after L2 norm {diff:.2e}, text {diff_text:.2e}")
    assert diff <= TOL and diff_text <= TOL


def test_convert_clipreid_without_clip_or_config(tiny_files, tmp_path, capsys):
    root, state, _ = tiny_files
    out = tmp_path / "ours.pth"
    tool.main(["--from", "clipreid", "--input", str(root / "official.pth"), "--output", str(out)])
    printed = capsys.readouterr().out
    assert f"{TOKEN_EMBEDDING_KEY} is left out" in printed and "(8x4: a 128x64 input, presumably)" in printed
    assert printed.strip().splitlines()[-1] == f"converted from=clipreid keys={len(state)} output={out}"
    assert TOKEN_EMBEDDING_KEY not in torch.load(out, weights_only=True)["model"]


def _error(argv) -> str:
    with pytest.raises(SystemExit) as info:
        tool.main(argv)
    return str(info.value.code)


def test_convert_clipreid_errors_name_the_file(tiny_files, tmp_path):
    root, state, token_embedding = tiny_files
    out = str(tmp_path / "ours.pth")
    clip = tmp_path / "openai_layout.pth"  # a CLIP state dict given as a CLIP-ReID checkpoint
    torch.save({"visual.conv1.weight": torch.zeros(8, 3, 16, 16), "token_embedding.weight": token_embedding}, clip)
    msg = _error(["--from", "clipreid", "--input", str(clip), "--output", out])
    assert str(clip) in msg and "--from openai-clip" in msg
    assert "does not exist" in _error(["--from", "clipreid", "--input", str(tmp_path / "nope.pth"), "--output", out])

    shallow = tmp_path / "three_text_blocks.pth"  # does not fit the config's 4 text blocks
    torch.save({k: v for k, v in state.items() if not k.startswith("text_encoder.transformer.resblocks.3.")}, shallow)
    msg = _error(["--from", "clipreid", "--input", str(shallow), "--output", out,
                  "--config-file", str(root / "tiny.yml")])
    assert str(shallow) in msg and "text_encoder.transformer.resblocks.3." in msg

    msg = _error(["--from", "clipreid", "--input", str(root / "official.pth"), "--output", out,
                  "--config-file", str(root / "tiny.yml"), "INPUT.SIZE_TEST", "[256, 128]"])
    assert str(root / "official.pth") in msg and "32 patches" in msg and "16x8" in msg


class _ScriptableCLIP(torch.nn.Module):
    """A few parameters with OpenAI CLIP's names plus the archive's metadata entries, to script and save."""

    def __init__(self):
        super().__init__()
        self.visual = torch.nn.Module()
        self.visual.conv1 = torch.nn.Conv2d(3, 8, 16, 16, bias=False)
        self.visual.positional_embedding = torch.nn.Parameter(torch.randn(5, 8))
        self.visual.proj = torch.nn.Parameter(torch.randn(8, 4))
        self.token_embedding = torch.nn.Embedding(16, 6)
        self.text_projection = torch.nn.Parameter(torch.randn(6, 4))
        self.logit_scale = torch.nn.Parameter(torch.ones([]))
        for name, value in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 16)):
            self.register_buffer(name, torch.tensor(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual.conv1(x).flatten(1) @ self.visual.proj.sum(1, keepdim=True)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("kind", ["torchscript", "state_dict"])
def test_convert_openai_clip(tmp_path, capsys, kind):
    module = _ScriptableCLIP().half()
    expected = {k: v for k, v in module.state_dict().items()
                if k not in ("input_resolution", "context_length", "vocab_size")}
    src = tmp_path / "ViT-tiny.pt"
    if kind == "torchscript":
        try:
            torch.jit.save(torch.jit.script(module), str(src))
        except Exception as err:  # noqa: BLE001  (TorchScript is deprecated in recent torch)
            pytest.skip(f"torch.jit cannot script a module here: {err}")
    else:
        torch.save({"state_dict": {"module." + k: v for k, v in module.state_dict().items()}}, src)
    out = tmp_path / "clip.safetensors"
    assert tool.main(["--from", "openai-clip", "--input", str(src), "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == \
        f"converted from=openai-clip keys={len(expected)} output={out}"
    got = load_file(str(out))
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert read_state_dict(str(out)).keys() == expected.keys()


def test_convert_openai_clip_rejects_other_files(tiny_files, tmp_path):
    root, _, _ = tiny_files
    msg = _error(["--from", "openai-clip", "--input", str(root / "official.pth"), "--output",
                  str(tmp_path / "clip.safetensors")])
    assert str(root / "official.pth") in msg and "not an OpenAI / open_clip CLIP" in msg and "--from clipreid" in msg
