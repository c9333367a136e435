"""Each host-compat patch: the failure it prevents (reproduced on the unpatched host in a fresh interpreter, see
unpatched_probe.py), the patched behaviour (in this process, where ``import plugins`` applied them), and its
feature test's answer when the problem is absent (simulated)."""
from __future__ import annotations

import importlib.machinery
import json
import subprocess
import sys
import sys as _sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from plugins.compat import IMPORT_PATCHES, applied_patches, checkpoint, distributed, python_stdlib, runtime_patches
from plugins.compat import dataloader as dl
from plugins.compat import evaluator as ev
from plugins.compat import transforms as tf

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def unpatched() -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("unpatched_probe.py")), str(REPO)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    crashed = {k: v["probe_crashed"] for k, v in res.items() if "probe_crashed" in v}
    assert not crashed, crashed
    return res


def test_every_patch_is_known_here():
    names = {p.name for p in IMPORT_PATCHES + runtime_patches()}
    covered = {"torch_six", "collections_abc", "numpy_bool", "checkpoint_weights_only", "cpu_dataloader",
               "cpu_launch", "cpu_ddp", "no_runtime_cython", "blockwise_reid_evaluate", "affine_kwargs",
               "cpu_rerank", "plain_optimizer_params",
               "flip_test_normalisation",  # failure and fix in test_flip_test_patch.py
               # failure and fix in tests/reliability/ (test_checkpoint_safety.py, test_unreadable_images.py)
               "torch_load_weights_only", "final_checkpoint_before_eval", "named_unreadable_image"}  # cpu_rerank: failure and fix in tests/clustering/test_rerank_patch.py
    assert names == covered, f"add a failure/fix test for new patches: {names - covered}"
    assert set(applied_patches()) >= names  # every patch was examined by `import plugins`


# --- import time -------------------------------------------------------------------------------------------
def test_torch_six_failure_and_fix(unpatched):
    assert unpatched["import_bare"]["message"] == "No module named 'torch._six'"
    assert unpatched["import_patched"]["error"] is None
    from torch._six import string_classes
    assert string_classes == (str, bytes)


def test_torch_six_feature_test_false_when_present(monkeypatch):
    real = types.ModuleType("torch._six")
    real.__spec__ = importlib.machinery.ModuleSpec("torch._six", None)  # as on torch 1.x, where it exists
    monkeypatch.setitem(_sys.modules, "torch._six", real)
    assert python_stdlib._torch_six_missing() is False


def test_torch_six_feature_test_after_patching():
    # the shim carries a spec, so asking the feature test again (e.g. a second apply) is safe
    assert python_stdlib._torch_six_missing() is False


def test_collections_abc_failure_and_fix(unpatched, monkeypatch):
    assert unpatched["import_torch_six_only"]["message"].startswith("cannot import name 'Mapping' from 'collections'")
    import collections
    import collections.abc
    assert collections.Mapping is collections.abc.Mapping
    assert python_stdlib._collections_abc_missing() is False
    monkeypatch.delattr(collections, "Mapping")
    assert python_stdlib._collections_abc_missing() is True


def test_numpy_bool_failure_and_fix(monkeypatch):
    from fastreid.evaluation.rank import evaluate_py
    assert python_stdlib._numpy_bool_missing() is False  # numpy 2.x has np.bool again
    monkeypatch.delattr(np, "bool")                       # simulate numpy 1.24-1.26
    assert python_stdlib._numpy_bool_missing() is True
    args = (np.array([[0.1, 0.2]]), np.array([1]), np.array([1, 2]), np.array([0]), np.array([1, 1]), 2, True)
    with pytest.raises(AttributeError, match="has no attribute 'bool'"):
        evaluate_py(*args)
    python_stdlib._alias_numpy_bool()
    cmc, m_ap = evaluate_py(*args)  # the CUHK03 path returns (cmc, mAP)
    assert m_ap == pytest.approx(1.0) and cmc[0] == 1.0


# --- runtime -----------------------------------------------------------------------------------------------
def test_dataloader_failure_and_fix(unpatched):
    assert "Found no NVIDIA driver" in unpatched["dataloader"]["message"] or \
        "CUDA" in unpatched["dataloader"]["message"]
    import fastreid.data.build as build
    assert build.DataLoaderX is dl.HostDataLoader
    batch = next(iter(build.DataLoaderX(0, dataset=torch.utils.data.TensorDataset(torch.arange(4.0)),
                                        batch_size=2, pin_memory=True)))
    assert batch[0].tolist() == [0.0, 1.0]


def test_dataloader_feature_test_false_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dl._no_cuda() is False and distributed._no_cuda() is False


def test_affine_failure_and_fix(unpatched):
    assert unpatched["affine"]["message"] == "RandomAffine.__init__() got an unexpected keyword argument 'resample'"
    from fastreid.config import get_cfg
    from fastreid.data.transforms import build_transforms
    cfg = get_cfg()
    cfg.INPUT.AFFINE.ENABLED = True
    t = build_transforms(cfg, is_train=True)
    assert any(isinstance(x, tf.LegacyRandomAffine) for x in t.transforms)
    import torchvision.transforms as T
    assert T.RandomAffine is not tf.LegacyRandomAffine  # torchvision itself untouched


def test_affine_feature_test_false_with_old_signature(monkeypatch):
    import torchvision.transforms as T

    def old_init(self, degrees, translate=None, scale=None, shear=None, resample=False, fillcolor=0):
        pass
    monkeypatch.setattr(T.RandomAffine, "__init__", old_init)
    assert tf._affine_lacks_resample() is False


def test_evaluator_compile_failure_and_fix(unpatched, monkeypatch):
    res = unpatched["evaluator"]
    assert res["error"] == "SystemExit" and res["message"] == "1"
    assert res["calls"][0][:2] == ["make", "-C"] and res["calls"][0][2].endswith("rank_cylib")
    from fastreid.config import get_cfg
    from fastreid.evaluation import ReidEvaluator
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    ReidEvaluator(get_cfg(), num_query=1)
    assert calls == []


def test_evaluator_feature_tests_false_when_absent(monkeypatch):
    import importlib.util
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: object() if n.endswith("rank_cy") else real_find(n, *a))
    assert ev._compiled_ranking_missing() is False
    from fastreid.evaluation.reid_evaluation import ReidEvaluator
    assert ev._evaluate_builds_dense_matrix(ReidEvaluator.fastreid_evaluate) is True
    assert ev._evaluate_builds_dense_matrix() is False  # routed


def test_checkpoint_failure_and_fix(unpatched, tmp_path):
    assert unpatched["checkpoint_numpy"]["error"] == "UnpicklingError"
    from fastreid.utils.checkpoint import Checkpointer
    good = tmp_path / "numpy_scalar.pth"
    torch.save({"model": {"weight": torch.ones(2, 2), "bias": torch.zeros(2)}, "iteration": np.int64(7)}, good)
    loaded = Checkpointer(torch.nn.Linear(2, 2))._load_file(str(good))
    assert loaded["iteration"] == 7 and torch.equal(loaded["model"]["weight"], torch.ones(2, 2))

    marker = tmp_path / "ran"
    bad = tmp_path / "bad.pth"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))
    torch.save({"model": {}, "x": Payload()}, bad)
    with pytest.raises(checkpoint.UnsafeCheckpointError, match=str(bad)):
        Checkpointer(torch.nn.Linear(2, 2))._load_file(str(bad))
    assert not marker.exists()


def test_checkpoint_feature_test_false_when_pinned(monkeypatch):
    from fastreid.utils.checkpoint import Checkpointer

    def _load_file(self, f):
        return torch.load(f, map_location="cpu", weights_only=True)
    monkeypatch.setattr(Checkpointer, "_load_file", _load_file)
    assert checkpoint._loader_not_pinned() is False


def test_checkpoint_feature_test_false_after_patching():
    assert checkpoint._loader_not_pinned() is False


def test_ddp_failure_and_fix(unpatched, tmp_path):
    assert unpatched["ddp"]["error"] == "ValueError" and "device_ids" in unpatched["ddp"]["message"]
    import torch.distributed as dist
    import fastreid.engine.defaults as defaults
    assert defaults.DistributedDataParallel is distributed.host_ddp
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = defaults.DistributedDataParallel(torch.nn.Linear(2, 2), device_ids=[0], broadcast_buffers=False)
        assert model.device_ids is None
        model(torch.ones(1, 2)).sum().backward()
    finally:
        dist.destroy_process_group()


def test_launch_failure_and_fix(unpatched):
    assert unpatched["launch"]["error"] == "AssertionError" and unpatched["launch"]["ran"] is False
    # fastreid.engine re-exports a function named `launch`: the worker lives on the *module*
    launch_module = _sys.modules["fastreid.engine.launch"]
    assert launch_module._distributed_worker is distributed._distributed_worker_cpu


# --- documentation -----------------------------------------------------------------------------------------
def test_third_party_readme_lists_every_patch():
    readme = REPO / "third_party" / "README.md"
    assert readme.is_file(), "third_party/README.md must list the host patches"
    text = readme.read_text()
    missing = [p.name for p in IMPORT_PATCHES + runtime_patches() if p.name not in text]
    assert not missing, f"third_party/README.md does not mention patches {missing}"


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint", b"PK\x03\x04truncated zip"])
def test_non_checkpoint_files_fail_naming_the_file(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(checkpoint.CheckpointFormatError,
                       match=rf"'{path}' \({len(content)} bytes\) is not a readable torch checkpoint"):
        checkpoint.load_checkpoint_file(str(path))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        checkpoint.load_checkpoint_file(str(tmp_path / "missing.pth"))
