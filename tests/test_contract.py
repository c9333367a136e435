"""Contract test over every component the plugin registers (discovered from the registries, not listed by hand).

Model components (backbones, heads, meta-architectures): built into a full model from a tiny config, one training
step on a tiny batch: finite losses, every trainable parameter gets a finite gradient; eval returns (N, D).
Routers, adapters and losses (plugins.registry): built from typed keywords, forward + backward on tiny inputs,
every trainable parameter gets a finite gradient, outputs honour the registry's stated contract.
Datasets: an ``ImageDataset`` whose reader refuses a missing tree loudly (its real-format behaviour is tested in
the file named in DATASETS). Trainers: honour TRAINER_REGISTRY's contract.

A newly registered component without an entry below FAILS ``test_every_component_has_an_entry``: add one line.
"""
from __future__ import annotations

import inspect

import pytest
import torch

import plugins.registry as plugin_registries
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.bases import ImageDataset
from fastreid.engine import DefaultTrainer
from fastreid.modeling import build_model
from fastreid.modeling.backbones import BACKBONE_REGISTRY
from fastreid.modeling.heads import REID_HEADS_REGISTRY
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from fastreid.utils.events import EventStorage
from fastreid.utils.registry import Registry
from plugins.config import import_methods, setup_cfg
from plugins.data.datasets.market_attribute import MARKET_ATTRIBUTES
from plugins.mosaic.schema import build_schema
from plugins.routers import Router

import_methods()  # method packages register their components on import, as train_net.py does

# Tiny base model: OSNet x0.25 + EmbeddingHead + Baseline at 64x32, CE + triplet. Entries override it.
BASE = {"MODEL.DEVICE": "cpu", "MODEL.META_ARCHITECTURE": "Baseline", "MODEL.BACKBONE.NAME": "build_osnet_backbone",
        "MODEL.BACKBONE.DEPTH": "x0_25", "MODEL.BACKBONE.FEAT_DIM": 128, "MODEL.BACKBONE.PRETRAIN": False,
        "MODEL.HEADS.NUM_CLASSES": 2, "MODEL.LOSSES.NAME": ("CrossEntropyLoss", "TripletLoss"),
        "INPUT.SIZE_TRAIN": [64, 32], "INPUT.SIZE_TEST": [64, 32]}
_VIT = {"MODEL.BACKBONE.NAME": "build_timm_vit_backbone", "MODEL.BACKBONE.TIMM_VIT.NAME": "vit_tiny_patch16_224",
        "MODEL.BACKBONE.FEAT_DIM": 192, "MODEL.BACKBONE.TIMM_VIT.IMG_SIZE": [64, 32],
        "MODEL.BACKBONE.TIMM_VIT.NUM_CAMERAS": 3, "MODEL.META_ARCHITECTURE": "CameraAwareBaseline"}

_CLIP = {"MODEL.BACKBONE.CLIP.NAME": "tiny", "MODEL.BACKBONE.CLIP.NUM_CAMERAS": 3, "MODEL.BACKBONE.FEAT_DIM": 128,
         "MODEL.BACKBONE.CLIP.WEIGHTS": ""}

# MoE-KD: tiny CLIP + tiny random ALIGN experts (frozen), narrow adapters / gate / projection
_MOEKD = {"MODEL.BACKBONE.CLIP.NAME": "tiny", "MODEL.BACKBONE.CLIP.WEIGHTS": "", "MOEKD.ALIGN.WIDTH_COEFFICIENT": 0.25,
          "MOEKD.ALIGN.DEPTH_COEFFICIENT": 0.25, "MOEKD.FEAT_DIM": 64, "MOEKD.CLIP.ADAPTER_HIDDEN": 32,
          "MOEKD.GATE.HIDDEN": [16, 8], "MOEKD.STUDENT.PROJ_DIM": 64}

# (registry, name) -> config overrides on BASE that put the component in a model. One line per component.
MODELS: dict[tuple[str, str], dict] = {
    ("BACKBONE", "build_timm_vit_backbone"): _VIT,
    ("META_ARCH", "CameraAwareBaseline"): {"MODEL.META_ARCHITECTURE": "CameraAwareBaseline"},
    ("REID_HEADS", "FCEmbeddingHead"): {"MODEL.HEADS.NAME": "FCEmbeddingHead", "MODEL.HEADS.EMBEDDING_DIM": 32,
                                        "MODEL.HEADS.NECK_FEAT": "after"},
    ("BACKBONE", "build_clip_backbone"): {**_CLIP, "MODEL.BACKBONE.NAME": "build_clip_backbone",
                                          "MODEL.META_ARCHITECTURE": "CameraAwareBaseline"},
    # the i2t term needs stage-1 text features (tests/clipreid/test_meta_arch.py checks that step)
    ("META_ARCH", "CLIPReID"): {**_CLIP, "MODEL.META_ARCHITECTURE": "CLIPReID", "CLIPREID.I2T_WEIGHT": 0.0},
    ("META_ARCH", "MoSAIC"): {**_CLIP, "MODEL.META_ARCHITECTURE": "MoSAIC", "CLIPREID.I2T_WEIGHT": 0.0,
                              "DATASETS.NAMES": ("Market1501Attribute",), "DATASETS.TESTS": ("Market1501Attribute",),
                              "PLUGINS.DATA.ATTRIBUTES": True, "MOSAIC.LAST_K": 2},
    ("META_ARCH", "DeMo"): {**_CLIP, "MODEL.META_ARCHITECTURE": "DeMo", "PLUGINS.DATA.MODALITIES": ["RGB", "NI", "TI"],
                            "DEMO.HDM_DROPOUT": 0.0},
    ("META_ARCH", "DMAdapter"): {**_CLIP, "MODEL.BACKBONE.CLIP.NUM_CAMERAS": 0, "MODEL.META_ARCHITECTURE": "DMAdapter"},
    ("META_ARCH", "MoEKDTeacher"): {**_MOEKD, "MODEL.META_ARCHITECTURE": "MoEKDTeacher"},
    ("META_ARCH", "MoEKDStudent"): {**_MOEKD, "MODEL.META_ARCHITECTURE": "MoEKDStudent",
                                    "MOEKD.STUDENT.TEACHER_WEIGHTS": "random"},  # tests/moekd: the trained path
}
# Market attribute vectors of the 4-image batch (binary fields alternate; age 0-3; one colour per group).
_ATTRS = torch.zeros(4, 27, dtype=torch.long)
_ATTRS[:, :9] = torch.tensor([[0], [1], [0], [1]])
_ATTRS[:, 9] = torch.arange(4)
_ATTRS[torch.arange(4), torch.tensor([10, 11, 12, 13])] = 1
_ATTRS[torch.arange(4), torch.tensor([18, 19, 20, 21])] = 1
# (registry, name) -> extra batch keys a model component reads (plugins/data/batch.py).
BATCH_EXTRAS: dict[tuple[str, str], dict] = {("META_ARCH", "MoSAIC"): {"attributes": _ATTRS},
                                             ("META_ARCH", "DeMo"): {"modalities": {
                                                 m: torch.rand(4, 3, 64, 32) * 255 for m in ("RGB", "NI", "TI")}}}
# DM-Adapter trains on (image, caption) pairs: SOT, 4 word ids, EOT, padding
_CAPTIONS = torch.zeros(4, 77, dtype=torch.long)
_CAPTIONS[:, 0], _CAPTIONS[:, 1:5], _CAPTIONS[:, 5] = 49406, torch.randint(1, 49405, (4, 4)), 49407
BATCH_EXTRAS[("META_ARCH", "DMAdapter")] = {"text_tokens": _CAPTIONS}
# dataset name -> the test file that reads real-format samples with it.
DATASETS: dict[str, str] = {
    **{n: "tests/data/test_readers_attributes.py" for n in ("Market1501Attribute", "DukeMTMCAttribute")},
    **{f"SynthReID{c}": "tests/data/test_readers_synthetic.py" for c in ("A", "B", "C", "D", "Pretrain")},
    **{f"SynthReIDAttr{c}": "tests/data/test_readers_synthetic.py" for c in ("A", "B", "C", "D")},
    **{n: "tests/data/test_readers_multimodal.py" for n in ("RGBNT201", "RGBNT100", "MSVR310")},
    "SynthRGBNT201": "tests/demo/test_demo_data.py",
    **{f"SynthPedes{c}": "tests/dmadapter/test_dmadapter_data.py" for c in "ABCD"},
    **{n: "tests/data/test_readers_text.py" for n in ("CUHKPEDES", "ICFGPEDES", "RSTPReid")},
    **{n: "tests/data/test_readers_market_layout.py" for n in ("OccludedDukeMTMC", "IUSTPersonReID")},
    **{f"MSMT17Cam{c}": "tests/data/test_readers_msmt17_cameras.py"
       for c in ("5", "6", "12", "13", "14", "15", "5_6", "12_13_14_15")},
}
# readers that build their own tree on first use (procedural data), so an empty root is not an error for them.
GENERATES_TREE = {f"SynthReID{c}" for c in ("A", "B", "C", "D", "Pretrain")} | {f"SynthReIDAttr{c}" for c in "ABCD"}
GENERATES_TREE |= {"SynthRGBNT201"}
GENERATES_TREE |= {f"SynthPedes{c}" for c in "ABCD"}
# trainer name -> config overrides for construction, or None when only the class contract is checked here.
TRAINERS: dict[str, dict | None] = {
    "PseudoLabelTrainer": None,  # construction needs a dataset tree: only the class contract is checked here
    "SAGEExpertTrainer": None,  # needs a source checkpoint and a dataset tree: tests/sage/test_pipeline.py
    "SAGEGateTrainer": None,  # needs source checkpoints and experts: tests/sage/test_pipeline.py
    "SAGEPipeline": None,  # a pipeline of DefaultTrainers: tests/sage/test_pipeline.py runs it end to end
    "CLIPReIDPromptTrainer": None,  # needs a dataset tree: tests/clipreid/test_pipeline.py
    "CLIPReIDTrainer": None,  # needs a dataset tree and stage-1 prompts: tests/clipreid/test_pipeline.py
    "CLIPReIDPipeline": None,  # tests/clipreid/test_pipeline.py runs it end to end
    "MoSAICTrainer": None,  # needs a CLIP-ReID checkpoint and an attribute dataset: tests/mosaic/test_mosaic_pipeline.py
    "MoSAICPipeline": None,  # tests/mosaic/test_mosaic_pipeline.py runs it end to end
    "MoEKDTrainer": None,  # needs a dataset tree: tests/moekd/test_moekd_pipeline.py runs it for every row
    "MoEKDPipeline": None,  # tests/moekd/test_moekd_pipeline.py runs it end to end
    "DeMoTrainer": None,  # needs a multi-modal dataset tree: tests/demo/test_demo_ladder.py runs it
    "DeMoLadder": None,  # tests/demo/test_demo_ladder.py runs it end to end
    "DMAdapterTrainer": None,  # needs a text dataset tree: tests/dmadapter/test_dmadapter_train.py runs it end to end
}
# router name -> (constructor keywords, function making (inputs, context)); weights are (*inputs.shape[:-1], K).
_SCHEMA = build_schema(MARKET_ATTRIBUTES)
ROUTERS: dict[str, tuple[dict, object]] = {
    "TopOneGate": ({"in_dim": 8, "num_experts": 2, "hidden": (16,)},  # MoE-KD: one-hot forward, soft gradient
                   lambda: (torch.randn(4, 8, requires_grad=True), {})),
    "SoftmaxTopKRouter": ({"dim": 8, "num_experts": 4, "top_k": 2},
                          lambda: (torch.randn(2, 5, 8, requires_grad=True), {})),
    "DomainAwareRouter": ({"dim": 8, "num_experts": 4, "top_k": 2},
                          lambda: (torch.randn(2, 5, 8, requires_grad=True), {})),
    # reads attribute vectors (B, A): nothing to differentiate, no parameters
    "OracleAttributeRouter": ({"schema": _SCHEMA}, lambda: (_ATTRS.clone(), {})),
    # hard decisions; its head trains through aux_loss (BCE against the oracle's sets)
    "PredictedAttributeRouter": ({"schema": _SCHEMA, "in_dim": 8},
                                 lambda: (torch.randn(4, 8, requires_grad=True), {"attributes": _ATTRS.clone()})),
    # SAGE-reID gates: the K=3 expert residuals (N=4 tokens, d_out=5) flattened per sample, (B, K*N*d_out)
    "SAGEGate": ({"num_experts": 3, "num_tokens": 4, "out_features": 5},
                 lambda: (torch.randn(2, 3 * 4 * 5, requires_grad=True), {})),
    "MoLEGate": ({"num_experts": 3, "num_tokens": 4, "out_features": 5},
                 lambda: (torch.randn(2, 3 * 4 * 5, requires_grad=True), {})),
}
# loss name -> (constructor keywords, function making its inputs (requires_grad leaves first)).
LOSSES: dict[str, tuple[dict, object]] = {
    "KDLoss": ({"temperature": 4.0}, lambda: ((torch.randn(4, 5, requires_grad=True),), (torch.randn(4, 5),))),
    "FeatureMSELoss": ({}, lambda: ((torch.randn(4, 8, requires_grad=True),), (torch.randn(4, 8),))),
    "AttentionTransferLoss": ({}, lambda: ((torch.randn(4, 6, 4, 2, requires_grad=True),), (torch.rand(4, 8, 4),))),
    "GramRelationLoss": ({}, lambda: ((torch.randn(4, 8, requires_grad=True),), (torch.randn(4, 16),))),
    "SDMLoss": ({"temperature": 0.02}, lambda: ((torch.randn(4, 8, requires_grad=True),
                                                 torch.randn(4, 8, requires_grad=True)), (torch.tensor([0, 1, 0, 2]),))),
    "SupConLoss": ({"temperature": 1.0}, lambda: ((torch.randn(4, 8, requires_grad=True),
                                                   torch.randn(6, 8, requires_grad=True)),
                                                  (torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 0, 1, 2])))),
}
# adapter name -> (constructor keywords, function making (base layer, forward arguments)).
ADAPTERS: dict[str, tuple[dict, object]] = {
    "LoRALinear": ({"rank": 2, "alpha": 4.0}, lambda: (torch.nn.Linear(8, 6), (torch.randn(3, 8),))),
    "LoRAMultiheadAttention": ({"targets": ("q", "k", "v", "out"), "rank": 2, "alpha": 4.0},
                               lambda: (torch.nn.MultiheadAttention(8, 2, batch_first=True),
                                        (torch.randn(2, 5, 8),) * 3)),
}

REGISTRIES: dict[str, Registry] = {"BACKBONE": BACKBONE_REGISTRY, "META_ARCH": META_ARCH_REGISTRY,
                                   "REID_HEADS": REID_HEADS_REGISTRY, "DATASET": DATASET_REGISTRY,
                                   **{n: r for n, r in vars(plugin_registries).items() if isinstance(r, Registry)}}


def registered() -> list[tuple[str, str, object]]:
    """(registry, name, object) for every plugin-owned entry of every registry."""
    return [(rn, name, obj) for rn, reg in REGISTRIES.items() for name, obj in reg._obj_map.items()
            if getattr(obj, "__module__", "").startswith("plugins.")]


def _entry_exists(rn: str, name: str) -> bool:
    if rn == "DATASET":
        return name in DATASETS
    if rn == "TRAINER_REGISTRY":
        return name in TRAINERS
    if rn == "ROUTER_REGISTRY":
        return name in ROUTERS
    if rn == "LOSS_REGISTRY":
        return name in LOSSES
    if rn == "ADAPTER_REGISTRY":
        return name in ADAPTERS
    return (rn, name) in MODELS


def test_every_component_has_an_entry():
    missing = [f"{rn}:{name}" for rn, name, _ in registered() if not _entry_exists(rn, name)]
    assert not missing, f"registered without a contract-test entry (add one line to tests/test_contract.py): {missing}"
    stale = [k for k in MODELS if k[1] not in REGISTRIES[k[0]]._obj_map]
    assert not stale, f"entries for components that are no longer registered: {stale}"


def tiny_cfg(overrides: dict):
    return setup_cfg("", [x for kv in {**BASE, **overrides}.items() for x in kv])


@pytest.mark.parametrize("key", sorted(MODELS), ids=lambda k: f"{k[0]}:{k[1]}")
def test_model_component_trains_one_step(key):
    torch.manual_seed(0)
    cfg = tiny_cfg(MODELS[key])
    model = build_model(cfg)
    h, w = cfg.INPUT.SIZE_TRAIN
    batch = {"images": torch.rand(4, 3, h, w) * 255, "targets": torch.tensor([0, 0, 1, 1]),
             "camids": torch.tensor([0, 1, 2, 0]), **BATCH_EXTRAS.get(key, {})}
    model.train()
    with EventStorage():
        losses = model(batch)
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not no_grad, f"trainable parameters without gradient: {no_grad[:10]}"
    assert not bad, f"non-finite gradients: {bad[:10]}"
    model.eval()
    with torch.no_grad():
        feats = model(batch)
    assert feats.dim() == 2 and feats.shape[0] == 4 and torch.isfinite(feats).all()


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_reader_contract(name, tmp_path, repo_root):
    cls = DATASET_REGISTRY.get(name)
    assert issubclass(cls, ImageDataset)
    assert (repo_root / DATASETS[name]).is_file(), f"{name}: the reader test {DATASETS[name]} does not exist"
    if name in GENERATES_TREE:
        pytest.skip(f"{name} generates its tree on first use (generation tested in {DATASETS[name]})")
    with pytest.raises(Exception) as err:  # an absent tree must fail loudly, not yield an empty dataset
        cls(root=str(tmp_path))
    assert str(tmp_path) in str(err.value) or "not found" in str(err.value).lower(), str(err.value)


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_trainer_contract(name):
    cls = plugin_registries.TRAINER_REGISTRY.get(name)
    assert issubclass(cls, DefaultTrainer) or all(callable(getattr(cls, m, None))
                                                  for m in ("resume_or_load", "train"))
    assert inspect.ismethod(cls.build_model) and inspect.ismethod(cls.test)  # classmethods, usable unbound
    if TRAINERS[name] is not None:
        cls(tiny_cfg(TRAINERS[name]))


def _check_grads(module: torch.nn.Module) -> None:
    no_grad = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    bad = [n for n, p in module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not no_grad, f"trainable parameters without gradient: {no_grad[:10]}"
    assert not bad, f"non-finite gradients: {bad[:10]}"


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_router_contract(name):
    torch.manual_seed(0)
    kwargs, make = ROUTERS[name]
    router = plugin_registries.ROUTER_REGISTRY.get(name)(**kwargs)
    assert isinstance(router, Router)
    x, context = make()
    out = router(x, **context)
    assert out.weights.shape == (*x.shape[:-1], router.num_experts)
    assert (out.weights >= 0).all() and torch.isfinite(out.weights).all()
    loss = (out.weights * torch.randn_like(out.weights)).sum() + (out.aux_loss if out.aux_loss is not None else 0)
    trainable = [p for p in router.parameters() if p.requires_grad]
    if not trainable and not loss.requires_grad:
        return  # a fixed rule (e.g. the attribute oracle): nothing to train
    assert torch.isfinite(loss)
    loss.backward()
    _check_grads(router)
    if x.is_floating_point():
        assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_contract(name):
    torch.manual_seed(0)
    kwargs, make = LOSSES[name]
    leaves, rest = make()
    loss = plugin_registries.LOSS_REGISTRY.get(name)(**kwargs)(*leaves, *rest)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in leaves)


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_adapter_contract(name):
    torch.manual_seed(0)
    kwargs, make = ADAPTERS[name]
    base, args = make()
    with torch.no_grad():
        reference = base(*args)
    adapter = plugin_registries.ADAPTER_REGISTRY.get(name)(base, **kwargs)
    out = adapter(*args)
    first = out[0] if isinstance(out, tuple) else out
    ref = reference[0] if isinstance(reference, tuple) else reference
    assert torch.allclose(first, ref, atol=1e-6), "a fresh adapter must return the base layer's output"
    assert not any(p.requires_grad for p in base.parameters()), "the base layer must be frozen"
    first.square().sum().backward()
    _check_grads(adapter)
    if hasattr(adapter, "merged"):  # with a non-zero update, the folded layer gives the adapted output
        with torch.no_grad():
            for p in adapter.parameters():
                if p.requires_grad:
                    p.normal_()
            out, merged = adapter(*args), adapter.merged()(*args)
        out, merged = (o[0] if isinstance(o, tuple) else o for o in (out, merged))
        assert torch.allclose(out, merged, atol=1e-4) and not torch.allclose(out, first.detach(), atol=1e-4)
