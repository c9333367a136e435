"""``tools/convert_weights.py --from demo``: an official DeMo checkpoint (official key names, with or without
``module.``) loads strictly into our ``DeMo`` and gives the official test feature (independent re-implementation
in ``official_reference.py``) on the same input: max abs difference after L2 norm <= 1e-4, also with modalities
missing. A small random model runs the features; the ViT-B/16 key layout is checked on the meta device."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from fastreid.modeling import build_model
from fastreid.utils.checkpoint import Checkpointer

from plugins.config import import_methods, setup_cfg
from plugins.demo.convert import convert_official_state, map_official_key

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    return module


ref = _load("demo_official_reference", HERE / "official_reference.py")
tool = _load("demo_convert_weights_tool", REPO / "tools" / "convert_weights.py")
Dims, official_feature, official_keys, random_official_state = (ref.Dims, ref.official_feature, ref.official_keys,
                                                                 ref.random_official_state)
import_methods()
# the tiny CLIP's image tower at 64x32: width 128, 4 blocks of 4 heads, patch 16 (4x2 grid), embed 128
SMALL = Dims(width=128, layers=4, heads=4, patch=16, grid=(4, 2), embed=128, mlp=512, cams=4, ids=5, moe_heads=4)
SMALL_OPTS = ["MODEL.BACKBONE.CLIP.NAME", "tiny", "MODEL.BACKBONE.CLIP.WEIGHTS", "", "INPUT.SIZE_TRAIN", "[64, 32]",
              "INPUT.SIZE_TEST", "[64, 32]"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_convert")
    state = random_official_state(SMALL, seed=3)
    official = out / "official.pth"
    torch.save({"module." + k: v for k, v in state.items()}, official)  # a DDP checkpoint
    ours = out / "ours.pth"
    rc = tool.main(["--from", "demo", "--input", str(official), "--output", str(ours), "--config-file",
                       str(REPO / "configs" / "demo" / "rgbnt201.yml"), *SMALL_OPTS])
    assert rc == 0
    return state, ours


def _model(ours, **extra):
    opts = SMALL_OPTS + ["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", "False", "MODEL.HEADS.NUM_CLASSES", "5",
                         *[x for kv in extra.items() for x in kv]]
    model = build_model(setup_cfg(str(REPO / "configs" / "demo" / "rgbnt201.yml"), opts))
    Checkpointer(model).load(str(ours))
    return model.eval()


def _inputs(b=3):
    g = torch.Generator().manual_seed(11)
    raw = {m: torch.rand(b, 3, 64, 32, generator=g) * 255 for m in ("RGB", "NI", "TI")}
    cams = torch.tensor([0, 3, 1][:b])
    return raw, cams


@pytest.mark.parametrize("missing", [(), (1,), (0, 2)], ids=["full", "M(N)", "M(RT)"])
def test_same_test_feature_as_the_official_forward(converted, missing):
    state, ours = converted
    raw, cams = _inputs()
    model = _model(ours)
    names = ("RGB", "NI", "TI")
    model.set_missing([names[i] for i in missing])
    with torch.no_grad():
        feat = model({"modalities": raw, "camids": cams})
    ref = official_feature(state, [(raw[m] - 127.5) / 127.5 for m in names], cams, SMALL, sie_coe=1.0,
                           missing=missing)
    assert feat.shape == ref.shape == (3, 10 * 128)
    diff = float((feat - ref).abs().max())
    print(f"max abs diff after L2 norm ({missing}): {diff:.2e}")
    assert diff <= 1e-4


def test_the_prefix_does_not_matter():
    state = random_official_state(SMALL, seed=1)
    a = convert_official_state(state).state
    b = convert_official_state({"module." + k: v for k, v in state.items()}).state
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    shape = convert_official_state(state).shape
    assert (shape.num_classes, shape.num_cameras, shape.moe_heads, shape.heads) == (5, 4, 4, "joint")


@pytest.mark.parametrize("config,dims", [
    ("rgbnt201.yml", Dims()),
    ("rgbnt100.yml", Dims(cams=8, ids=50, moe_heads=8, vehicle_heads=True)),
    ("msvr310.yml", Dims(cams=8, ids=155, moe_heads=8, vehicle_heads=True))])
def test_vit_b16_key_layout_maps_one_to_one(config, dims):
    """Every official ViT-B/16 key maps onto exactly one model key of the same shape, and nothing is left over."""
    cfg = setup_cfg(str(REPO / "configs" / "demo" / config), ["MODEL.DEVICE", "meta", "MODEL.BACKBONE.PRETRAIN",
                                                              "False", "MODEL.HEADS.NUM_CLASSES", str(dims.ids)])
    with torch.device("meta"):
        own = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    keys = official_keys(dims)
    assert sum(k.startswith("BACKBONE.base.") for k in keys) == 152
    mapped = {map_official_key(k): (tuple(s[0:1]) + tuple(s[2:]) if k == "BACKBONE.cv_embed" else tuple(s))
              for k, s in keys.items()}
    assert len(mapped) == len(keys)
    assert mapped == own


def test_unknown_keys_fail_naming_the_file():
    state = random_official_state(SMALL, seed=1)
    state["generalFusion.extra_token"] = torch.zeros(1)
    with pytest.raises(KeyError, match="ckpt.pth.*extra_token"):
        convert_official_state(state, source="ckpt.pth")
