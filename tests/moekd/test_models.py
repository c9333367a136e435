"""MoE-KD models: golden parameter counts, the teacher's fusions, sparse top-1 inference == dense top-1, the
student's losses, the expert cache (exact on the augmentation-free view) and the letterbox input."""
from __future__ import annotations

import pytest
import torch
from fastreid.modeling import build_model
from fastreid.utils.events import EventStorage
from PIL import Image

from plugins.data.letterbox import ResizePad, letterbox_transforms
from plugins.moekd.build import resnet_from_cfg
from plugins.moekd.experts import build_align_vision
from plugins.moekd.feature_cache import ExpertCache, cache_key
from plugins.moekd.teacher_mixture import align_adapter, clip_adapter
from plugins.moekd.gate import TopOneGate


def _count(m) -> int:
    return sum(p.numel() for p in m.parameters())


def _batch(n=4, h=64, w=32):
    torch.manual_seed(1)
    return {"images": torch.rand(n, 3, h, w) * 255, "targets": torch.tensor([0, 0, 1, 1, 2, 2][:n]),
            "img_paths": [f"img{i}.jpg" for i in range(n)]}


def test_student_parameter_count(make_cfg):
    """The paper's "ResNet-18 with 11.7M parameters" is torchvision's resnet18 with its 1000-class ImageNet FC
    (11,689,512). fast-reid's ResNet-18 backbone (no FC) has 11,176,512; the student adds the projection
    FC(512 -> 2048) + BN (1,054,720): 12,231,232 deployed, + 2048 x ids for the training-only classifier."""
    cfg = make_cfg(MODEL__META_ARCHITECTURE="MoEKDStudent", MOEKD__STUDENT__PROJ_DIM=2048,
                   MODEL__HEADS__NUM_CLASSES=0)
    backbone = resnet_from_cfg(cfg, "18x")
    assert _count(backbone) == 11_176_512
    assert _count(backbone) + 512 * 1000 + 1000 == 11_689_512  # torchvision resnet18: the paper's "11.7M"
    student = build_model(cfg)
    assert _count(student.projection) == 1_054_720
    assert student.num_deployed_parameters() == 12_231_232
    assert _count(student) == 12_231_232 + 2 * 2048  # + the BNNeck, kept for strict loading, not run at inference
    with_classifier = build_model(make_cfg(MODEL__META_ARCHITECTURE="MoEKDStudent", MOEKD__STUDENT__PROJ_DIM=2048,
                                           MOEKD__STUDENT__KD_WEIGHT=0.0, MOEKD__STUDENT__FEAT_WEIGHT=0.0,
                                           MOEKD__STUDENT__ATT_WEIGHT=0.0, MOEKD__STUDENT__REL_WEIGHT=0.0))
    assert _count(with_classifier) == 12_231_232 + 2 * 2048 + 2048 * 3  # + BNNeck and the training-only classifier


def test_paper_adapter_and_gate_parameter_counts():
    assert _count(clip_adapter(768)) == 768 * 1024 + 1024 + 1024 * 2048 + 2048 == 2_886_656
    assert _count(align_adapter(640)) == 640 * 2048 + 2048 == 1_312_768
    assert _count(TopOneGate(in_dim=4096)) == 4096 * 512 + 512 + 512 * 256 + 256 + 256 * 2 + 2 == 2_229_506


@pytest.mark.parametrize("fusion,depth", [("moe", None), ("concat", "18x"), ("average", "18x")])
def test_teacher_fusions_train_and_evaluate(fusion, depth, make_cfg):
    extra = {"MOEKD__FUSION": fusion}
    if depth:
        extra.update(MOEKD__BASE_DEPTH=depth)
    model = build_model(make_cfg(MODEL__META_ARCHITECTURE="MoEKDTeacher", **extra))
    assert model.mixture.names == (["clip"] if fusion == "concat" else ["clip", "align"])
    model.train()
    with EventStorage():
        losses = model(_batch())
    assert set(losses) == {"loss_cls", "loss_triplet"} and all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        assert model(_batch()).shape == (4, model.mixture.feat_dim)


def test_sparse_inference_equals_dense_top1_and_runs_each_expert_on_its_group(make_cfg):
    torch.manual_seed(0)
    model = build_model(make_cfg(MODEL__META_ARCHITECTURE="MoEKDTeacher", MOEKD__GATE__INPUT="image",
                                 MOEKD__GATE__STEM_WIDTH=16)).eval()
    mix = model.mixture
    with torch.no_grad():  # make the stem's choice depend on the image: both experts get samples
        mix.gate.mlp[-1].weight.mul_(50.0)
        images = torch.cat([torch.zeros(3, 3, 64, 32), torch.full((3, 3, 64, 32), 255.0)])
        images += torch.rand_like(images) * 20
        mix.sparse = False
        dense = mix(images)
        mix.sparse = True
        sparse = mix(images)
    assert torch.equal(sparse.gate.choice, dense.gate.choice)
    assert torch.allclose(sparse.feature, dense.feature, atol=1e-5)
    assert sparse.ran == {n: int((dense.gate.choice == k).sum()) for k, n in enumerate(mix.names)}
    assert sum(sparse.ran.values()) == 6 and dense.ran == {"clip": 6, "align": 6}


def test_teacher_feature_is_the_selected_experts_adapted_feature(make_cfg):
    model = build_model(make_cfg(MODEL__META_ARCHITECTURE="MoEKDTeacher")).eval()
    with torch.no_grad():
        out = model.mixture(_batch()["images"])
    for b in range(4):
        chosen = model.mixture.names[int(out.gate.choice[b])]
        assert torch.equal(out.feature[b], out.adapted[chosen][b])


def test_student_losses_and_eval(make_cfg):
    torch.manual_seed(0)
    model = build_model(make_cfg(MODEL__META_ARCHITECTURE="MoEKDStudent", MOEKD__STUDENT__TEACHER_WEIGHTS="random"))
    model.train()
    with EventStorage():
        losses = model(_batch())
    assert set(losses) == {"loss_cls", "loss_triplet", "loss_kd", "loss_feat", "loss_att", "loss_rel"}
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        assert model(_batch()).shape == (4, 64)


def test_student_logits_do_not_depend_on_the_scale_of_its_feature(make_cfg):
    """L_feat pulls F_s (the ReLU output of the projection) toward the teacher feature, whose scale is whatever the
    teacher learned (norm ~3 on the demo vs ~30 for a fresh BN + ReLU output). The classifier reads F_s through a
    BNNeck, as the teacher's does, so shrinking F_s leaves z_s unchanged; a classifier on F_s directly saw its
    logits shrink with it and CE stalled at log(#ids) (the demo's student: 27 mAP; README "student ablation")."""
    torch.manual_seed(0)
    model = build_model(make_cfg(MODEL__META_ARCHITECTURE="MoEKDStudent", MOEKD__STUDENT__KD_WEIGHT=0.0,
                                 MOEKD__STUDENT__FEAT_WEIGHT=0.0, MOEKD__STUDENT__ATT_WEIGHT=0.0,
                                 MOEKD__STUDENT__REL_WEIGHT=0.0)).train()
    torch.nn.init.normal_(model.classifier.weight, std=1.0)  # a classifier that has learned something
    batch = _batch(6)
    with EventStorage(), torch.no_grad():
        before = model(batch)["loss_cls"]
        assert before.item() > 0.1
        model.projection[1].weight.mul_(0.2)  # F_s = ReLU(BN(.)) scales with the BN affine: F_s / 5
        model.projection[1].bias.mul_(0.2)
        after = model(batch)["loss_cls"]
    assert after.item() == pytest.approx(before.item(), rel=1e-3)


@pytest.mark.parametrize("layer,invariant", [("neck", True), ("embedding", False)])
def test_feature_loss_compares_the_classifier_inputs(layer, invariant, make_cfg):
    """L_feat (FEAT_LAYER "neck") compares the two classifier inputs, i.e. BNNeck(F_s) with the teacher's
    BNNeck(F_t) (running statistics): a teacher whose feature is 10x larger (with the statistics of that feature)
    gives the same loss. "embedding" compares F_s with F_t as they are, so the loss follows the teacher's scale
    (the demo's teacher feature has norm ~3 vs ~30 for F_s: the loss was a scale offset, 70x the task loss)."""
    torch.manual_seed(0)
    model = build_model(make_cfg(MODEL__META_ARCHITECTURE="MoEKDStudent", MOEKD__STUDENT__TEACHER_WEIGHTS="random",
                                 MOEKD__STUDENT__KD_WEIGHT=0.0, MOEKD__STUDENT__ATT_WEIGHT=0.0,
                                 MOEKD__STUDENT__REL_WEIGHT=0.0, MOEKD__STUDENT__FEAT_LAYER=layer)).train()
    teacher = model.teacher.module
    assert not teacher.training
    with torch.no_grad():
        for layer_ in teacher.mixture.gate.mlp:  # bias-free ReLU MLP: 10x input -> 10x logits, same top-1
            if isinstance(layer_, torch.nn.Linear):
                layer_.bias.zero_()
    batch = _batch(6)
    with EventStorage(), torch.no_grad():
        before = model(batch)["loss_feat"].item()
        for adapter in teacher.mixture.adapters.values():  # F_t -> 10 F_t (the last Linear of each adapter)
            last = [m for m in adapter.modules() if isinstance(m, torch.nn.Linear)][-1]
            last.weight.mul_(10.0)
            last.bias.mul_(10.0)
        teacher.bottleneck.running_mean.mul_(10.0)
        teacher.bottleneck.running_var.mul_(100.0)
        after = model(batch)["loss_feat"].item()
    assert (after == pytest.approx(before, rel=1e-3)) is invariant, (before, after)


def test_student_without_teacher_fails_naming_the_key(make_cfg):
    with pytest.raises(ValueError, match="MOEKD.STUDENT.TEACHER_WEIGHTS"):
        build_model(make_cfg(MODEL__META_ARCHITECTURE="MoEKDStudent"))
    with pytest.raises(FileNotFoundError, match="no_such.pth"):
        build_model(make_cfg(MODEL__META_ARCHITECTURE="MoEKDStudent", MOEKD__STUDENT__TEACHER_WEIGHTS="no_such.pth"))


def test_random_align_expert_is_a_feature_extractor(make_cfg):
    """Without weights the ALIGN expert is a fixed random CNN whose BatchNorm statistics are calibrated on seeded
    noise: its features are O(1) and differ between images, the same on every build. transformers' init alone
    (BN statistics mean 0 / var 1, N(0, 0.02) convs) gives ~1e-27 for every image: a constant expert."""
    from plugins.moekd.build import build_align_expert
    from plugins.modeling.teachers import module_fingerprint

    cfg = make_cfg()
    torch.manual_seed(3)
    images = torch.rand(8, 3, 64, 32) * 255
    expert = build_align_expert(cfg)
    with torch.no_grad():
        out = expert(images)
    assert not expert.vision.training
    assert out.pooled.abs().mean() > 1e-2
    assert (out.pooled.std(dim=0).mean() / out.pooled.abs().mean()) > 0.05  # not a constant
    assert out.attention.std(dim=0).mean() > 1e-3
    assert module_fingerprint(build_align_expert(cfg)) == module_fingerprint(expert)  # a FIXED extractor
    raw = build_align_vision("", width_coefficient=0.25, depth_coefficient=0.25, calibration_size=None)
    with torch.no_grad():
        assert raw(pixel_values=images / 127.5 - 1).pooler_output.abs().max() < 1e-10  # why calibration exists


def test_cache_is_exact_on_the_augmentation_free_view(make_cfg, tmp_path):
    model = build_model(make_cfg(MODEL__META_ARCHITECTURE="MoEKDTeacher")).eval()
    batch = _batch()
    with torch.no_grad():
        live = model(batch)
        outs = model.mixture.run_experts(batch["images"])
    tensors = {f"{n}.{k}": getattr(o, k) for n, o in outs.items() for k in ("pooled", "attention")}
    key = cache_key(model.mixture, "view")
    ExpertCache(batch["img_paths"], tensors, key).save(str(tmp_path / "c.safetensors"))
    cache = ExpertCache.load(str(tmp_path / "c.safetensors"), key)
    model.attach_cache(cache)
    with torch.no_grad():
        cached = model({**batch, "images": torch.zeros_like(batch["images"])})  # experts not run: images unused
    assert torch.equal(cached, live) and cache.hits == 1
    with torch.no_grad():
        model({**batch, "img_paths": ["other.jpg"] * 4})  # a miss runs the experts
    assert cache.misses == 1
    with pytest.raises(ValueError, match="computed for key"):
        ExpertCache.load(str(tmp_path / "c.safetensors"), "another")


def test_cache_key_changes_with_expert_weights_and_view(make_cfg):
    model = build_model(make_cfg(MODEL__META_ARCHITECTURE="MoEKDTeacher"))
    key = cache_key(model.mixture, "view")
    assert cache_key(model.mixture, "other view") != key
    with torch.no_grad():
        next(model.mixture.experts["align"].module.parameters()).add_(1e-3)
    assert cache_key(model.mixture, "view") != key


def test_resize_pad_keeps_the_aspect_and_pads_with_zeros():
    img = Image.new("RGB", (64, 128), (200, 100, 50))  # w 64, h 128
    out = ResizePad((256, 256))(img)
    assert out.size == (256, 256)
    px = out.load()
    assert px[0, 128] == (0, 0, 0) and px[255, 128] == (0, 0, 0)  # left / right padding
    assert px[128, 128] == (200, 100, 50) and px[64, 0] == (200, 100, 50) and px[191, 255] == (200, 100, 50)
    assert px[63, 128] == (0, 0, 0)


def test_letterbox_replaces_only_the_resize(make_cfg):
    cfg = make_cfg(INPUT__SIZE_TRAIN=[256, 256], INPUT__SIZE_TEST=[256, 256], INPUT__FLIP__ENABLED=True)
    steps = letterbox_transforms(cfg, is_train=True).transforms
    assert isinstance(steps[0], ResizePad) and steps[0].size == (256, 256)
    assert any(type(s).__name__ == "RandomHorizontalFlip" for s in steps)
    test = letterbox_transforms(cfg, is_train=False)
    x = test(Image.new("RGB", (64, 128), (255, 255, 255)))
    assert tuple(x.shape) == (3, 256, 256) and x[:, :, :10].abs().sum() == 0 and x[:, 128, 128].min() > 0
