"""Frozen teachers (plugins/modeling/teachers.py) stay frozen, in eval mode and out of the state dict through
``.train()``, ``.to()`` and a checkpoint round trip, alone and inside the MoE-KD models."""
from __future__ import annotations

import copy

import pytest
import torch
from fastreid.modeling import build_model
from torch import nn

from plugins.compat.checkpoint import load_checkpoint_file
from plugins.modeling.teachers import FrozenTeacher, module_fingerprint


class Owner(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.teacher = FrozenTeacher(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)))


def test_frozen_module_is_out_of_state_dict_and_parameters():
    m = Owner()
    assert set(m.state_dict()) == {"head.weight", "head.bias"}
    assert [n for n, _ in m.named_parameters()] == ["head.weight", "head.bias"]
    assert not any(p.requires_grad for p in m.teacher.module.parameters())


def test_train_never_reaches_the_frozen_module():
    m = Owner()
    m.train()
    assert m.training and m.head.training and not m.teacher.module.training
    assert not any(x.training for x in m.teacher.module.modules())
    before = m.teacher.module[1].running_mean.clone()
    with torch.no_grad():
        y1 = m.teacher(torch.randn(8, 4) * 10)
        y2 = m.teacher(torch.randn(8, 4) * 10)
    assert torch.equal(m.teacher.module[1].running_mean, before)  # BN statistics fixed, dropout off
    assert not y1.requires_grad and not y2.requires_grad


def test_to_reaches_the_frozen_module():
    m = Owner().to(torch.float64)
    assert m.head.weight.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in m.teacher.module.parameters())
    assert m.teacher.module[1].running_mean.dtype == torch.float64
    m.to("cpu")  # and a device move keeps it frozen and in eval
    assert not m.teacher.module.training


def test_checkpoint_round_trip_and_deepcopy(tmp_path):
    m = Owner()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": m.state_dict()}, path)
    state = load_checkpoint_file(str(path))["model"]
    assert set(state) == {"head.weight", "head.bias"}
    other = Owner()
    other.load_state_dict(state)  # strict: the frozen module is not expected
    assert torch.equal(other.head.weight, m.head.weight)
    clone = copy.deepcopy(m)
    assert clone.teacher.module is not m.teacher.module and not clone.teacher.module.training


def test_fingerprint_changes_with_the_weights():
    lin = nn.Linear(3, 3)
    a = module_fingerprint(lin)
    assert module_fingerprint(lin) == a
    with torch.no_grad():
        lin.weight[0, 0] += 1e-3
    assert module_fingerprint(lin) != a


@pytest.mark.parametrize("arch", ["MoEKDTeacher", "MoEKDStudent"])
def test_moekd_models_keep_experts_frozen_and_out_of_checkpoints(arch, make_cfg, tmp_path):
    torch.manual_seed(0)
    cfg = make_cfg(MODEL__META_ARCHITECTURE=arch, MOEKD__STUDENT__TEACHER_WEIGHTS="random")
    model = build_model(cfg)
    model.train()
    model.to(torch.device("cpu"))
    keys = list(model.state_dict())
    assert not [k for k in keys if "experts" in k or k.startswith("teacher")], keys[:5]
    mixture = model.mixture if arch == "MoEKDTeacher" else model.teacher.module.mixture
    for expert in mixture.experts.values():
        assert not expert.module.training
        assert not any(p.requires_grad for p in expert.module.parameters())
    if arch == "MoEKDStudent":
        assert not model.teacher.module.training  # the whole trained teacher is frozen too
    trainable = {id(p) for p in model.parameters()}
    assert not any(id(p) in trainable for e in mixture.experts.values() for p in e.module.parameters())
    torch.save({"model": model.state_dict()}, tmp_path / "m.pth")
    rebuilt = build_model(cfg)
    rebuilt.load_state_dict(load_checkpoint_file(str(tmp_path / "m.pth"))["model"])  # strict
    # the frozen experts of a rebuilt model are the same fixed extractors (MOEKD.EXPERT_INIT_SEED)
    again = rebuilt.mixture if arch == "MoEKDTeacher" else rebuilt.teacher.module.mixture
    for n in mixture.names:
        assert module_fingerprint(again.experts[n].module) == module_fingerprint(mixture.experts[n].module)
