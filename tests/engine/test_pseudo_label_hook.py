"""PseudoLabelHook on a tiny model and a tiny Market-format dataset of solid-colour identities.

Every identity is one solid colour, so its images have identical features (distance 0) and different colours
differ: the Jaccard distance is 0 inside an identity and 1 across, hence DBSCAN recovers the identities exactly,
and an identity with fewer than MIN_SAMPLES images is all outliers.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fastreid.config import get_cfg
from fastreid.utils.events import EventStorage
from plugins.config import add_plugins_config
from plugins.engine.pseudo_label_hook import PseudoLabelHook
from plugins.engine.pseudo_label_trainer import PseudoLabelTrainer
from plugins.registry import TRAINER_REGISTRY

COLOURS = [(230, 20, 20), (20, 200, 30), (30, 40, 220), (240, 220, 30), (200, 30, 210)]
PER_ID = 6
OUTLIER_ID, OUTLIER_COLOUR, OUTLIER_N = 99, (20, 220, 220), 2


def make_market(root) -> dict[str, int]:
    """root/Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}; returns path -> true pid."""
    base = root / "Market-1501-v15.09.15"
    for d in ("bounding_box_train", "query", "bounding_box_test"):
        (base / d).mkdir(parents=True, exist_ok=True)
    truth = {}
    ids = [(pid, c, PER_ID) for pid, c in enumerate(COLOURS, start=1)] + [(OUTLIER_ID, OUTLIER_COLOUR, OUTLIER_N)]
    for pid, colour, n in ids:
        for k in range(n):
            path = base / "bounding_box_train" / f"{pid:04d}_c{k % 2 + 1}s1_{k:06d}_00.jpg"
            Image.new("RGB", (16, 32), colour).save(path, quality=95)
            truth[str(path)] = pid
            if k == 0:  # one query + one gallery box per id so the evaluator has something to rank
                Image.new("RGB", (16, 32), colour).save(base / "query" / f"{pid:04d}_c1s1_{k:06d}_00.jpg")
                Image.new("RGB", (16, 32), colour).save(base / "bounding_box_test" / f"{pid:04d}_c2s1_{k:06d}_00.jpg")
    return truth


def tiny_cfg(out_dir, frozen: bool = True):
    cfg = get_cfg()
    add_plugins_config(cfg)
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.META_ARCHITECTURE", "Baseline", "MODEL.BACKBONE.NAME", "build_resnet_backbone",
        "MODEL.BACKBONE.DEPTH", "18x", "MODEL.BACKBONE.FEAT_DIM", 512, "MODEL.BACKBONE.PRETRAIN", False,
        "MODEL.BACKBONE.LAST_STRIDE", 1, "MODEL.LOSSES.NAME", ("CrossEntropyLoss", "TripletLoss"),
        "INPUT.SIZE_TRAIN", [32, 16], "INPUT.SIZE_TEST", [32, 16], "INPUT.FLIP.ENABLED", False,
        "INPUT.PADDING.ENABLED", False, "DATASETS.NAMES", ("Market1501",), "DATASETS.TESTS", ("Market1501",),
        "DATALOADER.NUM_WORKERS", 0, "DATALOADER.SAMPLER_TRAIN", "NaiveIdentitySampler",
        "DATALOADER.NUM_INSTANCE", 2, "SOLVER.OPT", "Adam", "SOLVER.BASE_LR", 0.01, "SOLVER.IMS_PER_BATCH", 8,
        "SOLVER.MAX_EPOCH", 2, "SOLVER.WARMUP_ITERS", 0, "TEST.IMS_PER_BATCH", 8, "OUTPUT_DIR", str(out_dir),
        "PLUGINS.TRAINER", "PseudoLabelTrainer",
        "PLUGINS.PSEUDO_LABEL.K1", 6, "PLUGINS.PSEUDO_LABEL.K2", 2, "PLUGINS.PSEUDO_LABEL.EPS_MODE", "fixed",
        "PLUGINS.PSEUDO_LABEL.EPS", 0.6, "PLUGINS.PSEUDO_LABEL.MIN_SAMPLES", 4,
        "PLUGINS.PSEUDO_LABEL.CLASSIFIER_FROZEN", frozen, "PLUGINS.PSEUDO_LABEL.FEATURE_BATCH", 8,
    ])
    cfg.freeze()
    return cfg


def build(tmp_path, monkeypatch, frozen=True):
    truth = make_market(tmp_path / "data")
    monkeypatch.setenv("FASTREID_DATASETS", str(tmp_path / "data"))
    (tmp_path / "out").mkdir()
    torch.manual_seed(0)
    trainer = PseudoLabelTrainer(tiny_cfg(tmp_path / "out", frozen))
    hook = next(h for h in trainer._hooks if isinstance(h, PseudoLabelHook))
    hook.before_train()
    return trainer, hook, truth


def run_step(trainer):
    with EventStorage(0) as trainer.storage:
        trainer.iter = 0
        trainer.run_step()


def test_registered_and_hook_before_writer(tmp_path, monkeypatch):
    from fastreid.engine import hooks

    assert TRAINER_REGISTRY.get("PseudoLabelTrainer") is PseudoLabelTrainer
    trainer, hook, _ = build(tmp_path, monkeypatch)
    kinds = [type(h) for h in trainer._hooks]
    assert kinds.index(PseudoLabelHook) == kinds.index(hooks.PeriodicWriter) - 1
    # the initial classifier has a single placeholder row: the target labels were never read
    assert trainer.model.heads.weight.shape[0] == 1
    assert trainer.data_loader.dataset.num_classes == 1


@pytest.mark.parametrize("frozen", [True, False])
def test_recluster_rebuilds_loader_classifier_optimizer(tmp_path, monkeypatch, frozen):
    trainer, hook, truth = build(tmp_path, monkeypatch, frozen)
    old_weight = trainer.model.heads.weight  # the one-row placeholder (no step is possible on one class)
    result = hook.update(epoch=0)
    # clusters recover the identities; the 2-image identity is outliers and dropped
    labels = dict(zip([p for p, _ in hook.items], result.labels.tolist()))
    assert result.num_clusters == len(COLOURS) and result.num_outliers == OUTLIER_N
    by_pid = {}
    for path, lab in labels.items():
        by_pid.setdefault(truth[path], set()).add(lab)
    assert by_pid[OUTLIER_ID] == {-1}
    assert sorted(next(iter(s)) for pid, s in by_pid.items() if pid != OUTLIER_ID) == list(range(len(COLOURS)))
    assert all(len(s) == 1 for s in by_pid.values())
    assert sorted(hook.pseudo_items) == sorted((p, labels[p], c) for p, c in hook.items if labels[p] >= 0)

    # the loader yields only pseudo-labelled items, with their pseudo-labels as targets
    assert len(trainer.data_loader.dataset) == len(truth) - OUTLIER_N
    batch = next(trainer._trainer._data_loader_iter)
    for path, target in zip(batch["img_paths"], batch["targets"].tolist()):
        assert truth[path] != OUTLIER_ID and labels[path] == target

    # classifier = L2-normalised centroids of features extracted independently here
    feats = hook.extract_features(trainer.model)
    lab = np.array([labels[p] for p, _ in hook.items])
    cents = F.normalize(torch.stack([torch.from_numpy(feats[lab == c]).mean(0) for c in range(5)]), dim=1)
    head = trainer.model.heads
    assert head.weight.shape == (5, 512) and head.cls_layer.num_classes == 5
    torch.testing.assert_close(head.weight.detach(), cents, atol=1e-5, rtol=1e-5)
    assert head.weight.requires_grad is (not frozen)

    # optimizer: new parameter in the old one's group, stale state dropped
    groups = [g for g in trainer.optimizer.param_groups if any(p is head.weight for p in g["params"])]
    assert len(groups) == 1
    assert not any(p is old_weight for g in trainer.optimizer.param_groups for p in g["params"])
    assert old_weight not in trainer.optimizer.state

    # a training step after re-clustering runs and changes the trainable parameters only
    w0 = head.weight.detach().clone()
    conv0 = trainer.model.backbone.conv1.weight.detach().clone()
    run_step(trainer)
    assert not torch.equal(conv0, trainer.model.backbone.conv1.weight)
    assert torch.equal(w0, head.weight.detach()) is frozen

    # a second clustering replaces the classifier again and drops its optimizer state (Adam moments when trained)
    prev = head.weight
    assert (prev in trainer.optimizer.state) is (not frozen)
    hook.update(epoch=1)
    assert prev not in trainer.optimizer.state and trainer.model.heads.weight is not prev
    assert not any(p is prev for g in trainer.optimizer.param_groups for p in g["params"])
    run_step(trainer)


def test_bad_eps_mode_fails_fast():
    cfg = get_cfg()
    add_plugins_config(cfg)
    cfg.PLUGINS.PSEUDO_LABEL.EPS_MODE = "auto"
    with pytest.raises(ValueError, match="EPS_MODE"):
        PseudoLabelHook.from_config(cfg)


def _dist_worker(tmp: str):
    """One rank of the 2-process run: cluster once, write rank 0's labels and every rank's classifier, step."""
    from pathlib import Path

    from fastreid.utils import comm
    from torch.nn.parallel import DistributedDataParallel

    tmp = Path(tmp)
    torch.manual_seed(0)
    trainer = PseudoLabelTrainer(tiny_cfg(tmp / "out_dist"))
    hook = next(h for h in trainer._hooks if isinstance(h, PseudoLabelHook))
    hook.before_train()
    result = hook.update(epoch=0)
    rank = comm.get_rank()
    assert isinstance(trainer.model, DistributedDataParallel)
    np.save(tmp / f"weight_rank{rank}.npy", trainer.model.module.heads.weight.detach().numpy())
    if rank == 0:
        np.save(tmp / "labels_dist.npy", result.labels)
    run_step(trainer)  # DDP re-wrapped around the new classifier: a distributed step runs
    np.save(tmp / f"conv_rank{rank}.npy", trainer.model.module.backbone.conv1.weight.detach().numpy())


@pytest.mark.slow
def test_distributed_labels_equal_single_process(tmp_path, monkeypatch):
    """2 CPU processes (gloo): sharded extraction, clustering on rank 0, broadcast == the single-process run."""
    from fastreid.engine import launch

    trainer, hook, _ = build(tmp_path, monkeypatch)  # sets FASTREID_DATASETS, which the children inherit
    single = hook.update(epoch=0)
    (tmp_path / "out_dist").mkdir()
    launch(_dist_worker, 2, dist_url="auto", args=(str(tmp_path),))
    np.testing.assert_array_equal(np.load(tmp_path / "labels_dist.npy"), single.labels)
    w0, w1 = np.load(tmp_path / "weight_rank0.npy"), np.load(tmp_path / "weight_rank1.npy")
    np.testing.assert_array_equal(w0, w1)
    np.testing.assert_allclose(w0, trainer.model.heads.weight.detach().numpy(), atol=1e-5)
    # after the DDP step, both ranks hold the same (all-reduced) weights
    np.testing.assert_allclose(np.load(tmp_path / "conv_rank0.npy"), np.load(tmp_path / "conv_rank1.npy"), atol=1e-6)


def test_resume_restores_clustering_classifier_and_optimizer_state(tmp_path, monkeypatch):
    """A checkpoint holds the hook's clustering; a resumed trainer trains on it without re-clustering mid-period."""
    trainer, hook, _ = build(tmp_path, monkeypatch, frozen=False)
    result = hook.update(epoch=0)
    run_step(trainer)
    trainer.checkpointer.save("model_0000", epoch=0)
    saved_weight = trainer.model.heads.weight.detach().clone()
    saved_moment = trainer.optimizer.state[trainer.model.heads.weight]["exp_avg"].clone()

    cfg = trainer.cfg.clone()
    cfg.defrost()
    cfg.PLUGINS.PSEUDO_LABEL.PERIOD = 2  # epoch 1 is mid-period: the resumed run must not re-cluster
    cfg.freeze()
    torch.manual_seed(1)
    resumed = PseudoLabelTrainer(cfg)
    hook2 = next(h for h in resumed._hooks if isinstance(h, PseudoLabelHook))
    resumed.resume_or_load(resume=True)
    assert resumed.start_epoch == 1
    np.testing.assert_array_equal(hook2.last.labels, result.labels)
    assert hook2.last.eps == result.eps and hook2.pseudo_items == hook.pseudo_items
    head = resumed.model.heads
    torch.testing.assert_close(head.weight.detach(), saved_weight, rtol=0, atol=0)
    assert head.cls_layer.num_classes == result.num_clusters
    # the optimizer's Adam moments were loaded onto the restored (C, D) classifier, not dropped
    torch.testing.assert_close(resumed.optimizer.state[head.weight]["exp_avg"], saved_moment, rtol=0, atol=0)
    assert len(resumed.data_loader.dataset) == len(hook.pseudo_items)

    hook2.before_train()
    assert len(hook2.items) == len(hook.items)  # the pool, not the restored pseudo-labelled subset
    calls = []
    monkeypatch.setattr(hook2, "update", lambda epoch: calls.append(epoch))
    resumed.epoch = 1
    hook2.before_epoch()
    assert calls == []
    resumed.epoch = 2
    hook2.before_epoch()
    assert calls == [2]
    run_step(resumed)


def test_resume_refuses_a_checkpoint_of_another_pool(tmp_path, monkeypatch):
    trainer, hook, _ = build(tmp_path, monkeypatch)
    hook.update(epoch=0)
    state = hook.state_dict()
    state["labels"] = state["labels"][:-1]
    with pytest.raises(ValueError, match="pseudo-labels cover"):
        hook.load_state_dict(state)
