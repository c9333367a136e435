"""ONNX export of every image-encoder family built tiny: parity with onnxruntime < 1e-4, dynamic batch, camera
inputs where the model reads them, static merges at the plain ViT's graph, and a clear error for an
unexportable operator."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from inference_models import make_cfg, save_checkpoint
from plugins.inference.export import (ExportError, export_image_encoder, onnx_features, onnx_op_counts, parity,
                                      reads_camids)
from plugins.inference.gallery_index import list_image_items
from plugins.inference.predictor import Predictor

pytest.importorskip("onnxruntime")


def _batch(predictor, gallery_dir, num=7):
    """Real-format images (files read with the config's test transforms) and their camera ids."""
    from plugins.engine.loaders import make_test_loader

    items = list_image_items(str(gallery_dir / "gallery"))[:num]
    loader, _ = make_test_loader(predictor.cfg, items, batch_size=num, num_workers=0)
    batch = next(iter(loader))
    return batch["images"].float(), batch["camids"].long()


@pytest.mark.parametrize("family,camids", [("osnet", False), ("vit", False), ("clip", True)])
def test_family_parity_and_dynamic_batch(family, camids, gallery_dir, tmp_path):
    cfg = make_cfg(family, "TEST.FLIP.ENABLED", "True")
    predictor = Predictor(cfg, save_checkpoint(cfg, tmp_path / "m.pth"))
    images, cams = _batch(predictor, gallery_dir)
    path = str(tmp_path / "m.onnx")
    wrapper = export_image_encoder(predictor.model, path, images[:2], flip=predictor.flip)
    assert wrapper.with_camids is camids  # the tiny CLIP-ReID has SIE camera embeddings; the others none
    assert parity(wrapper, path, images, cams) < 1e-4     # 7 images through a graph traced with 2
    # the ONNX features are the predictor's (flip mean included)
    expected = predictor({"images": images, "camids": cams})
    got = torch.from_numpy(onnx_features(path, images, cams))
    nrm = torch.nn.functional.normalize
    assert (nrm(got, dim=1) - nrm(expected, dim=1)).abs().max() < 1e-4


def _tiny_vit(tmp_path, gallery_dir):
    cfg = make_cfg("vit")
    predictor = Predictor(cfg, save_checkpoint(cfg, tmp_path / "vit.pth"))
    return predictor, _batch(predictor, gallery_dir)


LINEARS = [f"blocks.{i}.{m}" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]


def _experts(vit, k=3, rank=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mods = dict(vit.named_modules())
    return [{n: (torch.randn(rank, mods[n].in_features, generator=gen) * 0.1,
                 torch.randn(mods[n].out_features, rank, generator=gen) * 0.1, 2.0) for n in LINEARS}
            for _ in range(k)]


@pytest.mark.parametrize("method,kwargs", [("lora_average", {}), ("ties", {"density": 0.5}),
                                           ("tsv_merge", {})])
def test_static_merge_folds_into_plain_vit(method, kwargs, tmp_path, gallery_dir):
    """A static merge (W += merged delta) exports to exactly the plain ViT's graph (same ops, same counts)."""
    from plugins.tuners.merge import LowRankDelta, merge_state_dicts

    predictor, (images, cams) = _tiny_vit(tmp_path, gallery_dir)
    plain = str(tmp_path / "plain.onnx")
    export_image_encoder(predictor.model, plain, images[:2])
    vit = predictor.model.backbone.vit if hasattr(predictor.model.backbone, "vit") else predictor.model.backbone
    deltas = [{n: LowRankDelta(B=b * s, A=a) for n, (a, b, s) in e.items()} for e in _experts(vit)]
    merged = merge_state_dicts(deltas, method, **kwargs)
    before = predictor({"images": images})
    mods = dict(vit.named_modules())
    with torch.no_grad():
        for name, delta in merged.items():
            mods[name].weight += delta
    path = str(tmp_path / "merged.onnx")
    wrapper = export_image_encoder(predictor.model, path, images[:2])
    assert onnx_op_counts(path) == onnx_op_counts(plain)
    assert parity(wrapper, path, images, cams) < 1e-4
    assert not torch.allclose(predictor({"images": images}), before, atol=1e-4)  # the merge changed the model


def test_sage_gated_vit_exports(tmp_path, gallery_dir):
    """The SAGE gated model: K LoRA experts per linear mixed by per-sample gates (SAGEGate) -> ONNX parity."""
    from plugins.sage.gate import SAGEGate
    from plugins.tuners.inject import inject_gated_lora

    predictor, (images, cams) = _tiny_vit(tmp_path, gallery_dir)
    vit = predictor.model.backbone.vit if hasattr(predictor.model.backbone, "vit") else predictor.model.backbone
    gen = torch.Generator().manual_seed(1)

    def make_gate(name, base):
        gate = SAGEGate(num_tokens=9, out_features=base.out_features)  # 64x32 / 16x16 patches + CLS
        with torch.no_grad():
            gate.weight.copy_(torch.randn(gate.weight.shape, generator=gen))
        return gate

    inject_gated_lora(vit, _experts(vit), make_gate=make_gate)
    predictor.model.eval()
    path = str(tmp_path / "sage.onnx")
    wrapper = export_image_encoder(predictor.model, path, images[:2])
    assert parity(wrapper, path, images, cams) < 1e-4


def test_camera_ids_detected():
    class Cams(nn.Module):
        def forward(self, batch):
            return batch["images"].flatten(1)[:, :4] + batch.get("camids", torch.zeros(1)).float()[:, None]

    class NoCams(nn.Module):
        def forward(self, batch):
            return batch["images"].flatten(1)[:, :4]

    images = torch.rand(2, 3, 4, 4) * 255
    assert reads_camids(Cams(), images) and not reads_camids(NoCams(), images)


def test_unexportable_op_named(tmp_path):
    class Spectral(nn.Module):
        """An eval forward using an eigendecomposition, which ONNX has no operator for."""

        def forward(self, batch):
            x = batch["images"].flatten(2)
            return torch.linalg.eigh(x @ x.transpose(1, 2))[0]

    with pytest.raises(ExportError, match="Spectral.*operator 'aten::linalg_eigh' is not supported"):
        export_image_encoder(Spectral(), str(tmp_path / "x.onnx"), torch.rand(2, 3, 4, 4) * 255)


@pytest.mark.parametrize("arch", ["MoEKDStudent", "MoEKDTeacher"])
def test_moekd_exports(arch, tmp_path, repo_root):
    """MoE-KD (its demo config, random init): the ResNet-18 student and the gated teacher mixture."""
    from plugins.config import setup_cfg

    cfg = setup_cfg(str(repo_root / "configs" / "moekd" / "demo.yml"),
                    ["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "MODEL.META_ARCHITECTURE", arch,
                     "MODEL.BACKBONE.CLIP.WEIGHTS", ""])
    predictor = Predictor(cfg, save_checkpoint(cfg, tmp_path / "m.pth"))
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, *cfg.INPUT.SIZE_TEST, generator=gen) * 255
    path = str(tmp_path / "m.onnx")
    wrapper = export_image_encoder(predictor.model, path, images[:2])
    assert parity(wrapper, path, images) < 1e-4
