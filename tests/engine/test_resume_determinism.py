"""A seeded run killed and resumed ends bit for bit like an uninterrupted one (``plugins.engine.seeding``).

Unit checks: stable derived seeds (known answers: no salted ``hash``), the epoch hook goes first and restarts a
fast-reid train loader (0 or 2 workers) to the same batches for the same (seed, epoch), every training config is
seeded. End to end (slow): the SAGE pipeline on the tiny synthetic domains of tests/sage/test_pipeline.py with 2-epoch
stages 1 and 2, killed inside stage 1 (expert b, epoch 1, after 2 of its 4 steps) and then, on the rerun, inside
stage 2 (the SAGE gate, same place); the kill leaves the files a SIGKILL leaves (epoch 0's checkpoint, no
done.json, no after-train hook run). The third run finishes: its results.json, the resumed expert and the resumed
gate checkpoint equal the uninterrupted run's exactly. Likewise one DefaultTrainer run by train_net and continued
with ``--resume``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fastreid.data import samplers
from fastreid.data.build import build_reid_train_loader
from fastreid.engine import DefaultTrainer
from fastreid.engine.train_loop import HookBase, TrainerBase

from plugins.compat.checkpoint import load_checkpoint_file
from plugins.data.datasets.synthetic import SynthReIDBase
from plugins.data.synthetic import SynthConfig
from plugins.engine.seeding import EpochSeedHook, derive_seed, install_epoch_seeding, restart_train_loader
from plugins.engine.stages import DONE_FILE
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]


# --- unit checks --------------------------------------------------------------------------------------------------

def test_derived_seeds_are_stable_and_distinct():
    # sha256-based: the same in every process and Python run (PYTHONHASHSEED does not matter)
    assert derive_seed(0, "stage 1 (expert SynthReIDA)") == derive_seed(0, "stage 1 (expert SynthReIDA)")
    assert derive_seed(0, "x") == 1785639165 and derive_seed(7, "epoch", 3) == 1421179633
    seeds = {derive_seed(s, k, e) for s in (0, 1) for k in ("stage0/a", "stage0/b") for e in range(3)}
    assert len(seeds) == 12 and all(0 <= s < 2 ** 31 for s in seeds)


class _Images(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):  # a random "augmentation" from torch's RNG (a worker's seed when there are workers)
        return {"index": i, "noise": torch.rand(())}


class _FakeTrainer(TrainerBase):
    """The parts of fast-reid's DefaultTrainer that the epoch hook touches."""

    def __init__(self, loader):
        super().__init__()
        self.storage, self.iter = type("Storage", (), {})(), 0

        class Inner:
            pass

        self._trainer = Inner()
        self._trainer.data_loader = loader
        self._trainer._data_loader_iter = iter(loader)


def _epoch_batches(trainer, epoch, steps=3):
    trainer.epoch = epoch
    trainer.before_epoch()
    out = []
    for _ in range(steps):
        trainer.before_step()
        batch = next(trainer._trainer._data_loader_iter)
        out.append((batch["index"].tolist(), batch["noise"].tolist()))
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_epoch_hook_restarts_the_loader_per_epoch(workers):
    """Epoch e's batches (identity sampling and augmentation draws) depend only on (stage seed, e): not on what the
    loader or the RNGs did before, so an epoch resumed in a fresh trainer repeats exactly."""
    def trainer():
        data = _Images(24)
        data.img_items = [(f"{i}.jpg", f"p{i // 4}", i % 3) for i in range(24)]  # 6 identities x 4
        sampler = samplers.NaiveIdentitySampler(data.img_items, 8, 4, seed=123)
        t = _FakeTrainer(build_reid_train_loader(train_set=data, sampler=sampler, total_batch_size=8,
                                                 num_workers=workers))
        assert install_epoch_seeding(t, 99)
        return t

    first = trainer()
    first.register_hooks([HookBase()])
    assert isinstance(first._hooks[0], EpochSeedHook)  # before every other hook, whenever they were registered
    uninterrupted = [_epoch_batches(first, e) for e in range(3)]
    assert uninterrupted[0] != uninterrupted[1]  # a new stream every epoch
    torch.rand(5)  # a different history before the resumed epoch
    resumed = trainer()
    assert _epoch_batches(resumed, 2) == uninterrupted[2]
    assert not install_epoch_seeding(object(), 99) and not install_epoch_seeding(resumed, None)


def test_restart_keeps_a_replaced_loader():
    """A loader a hook swapped in during before_epoch (pseudo-labels) is not restarted by the epoch hook."""
    data = _Images(8)
    loader = build_reid_train_loader(train_set=data, sampler=samplers.TrainingSampler(8, seed=1), total_batch_size=4)
    t = _FakeTrainer(loader)
    install_epoch_seeding(t, 5)
    t.epoch = 0
    t.before_epoch()
    swapped = build_reid_train_loader(train_set=data, sampler=samplers.TrainingSampler(8, seed=2), total_batch_size=4)
    fresh = iter(swapped)
    t._trainer.data_loader, t._trainer._data_loader_iter = swapped, fresh
    t.before_step()
    assert t._trainer._data_loader_iter is fresh and swapped.batch_sampler.sampler._seed == 2
    restart_train_loader(t, 17)
    assert swapped.batch_sampler.sampler._seed == 17 and t._trainer._data_loader_iter is not fresh


def test_every_training_config_is_seeded():
    """Every shipped YAML that trains sets PLUGINS.SEED >= 0 (itself or through its _BASE_); ``*_eval.yml`` only
    evaluate."""
    from plugins.config import setup_cfg

    unseeded = [str(p.relative_to(REPO)) for p in sorted((REPO / "configs").rglob("*.yml"))
                if not p.stem.endswith("_eval") and int(setup_cfg(str(p)).PLUGINS.SEED) < 0]
    assert not unseeded


# --- end to end: SAGE killed inside stage 1 and inside stage 2 ----------------------------------------------------

TINY_DOMAIN = SynthConfig(train_ids=16, test_ids=8, images_per_id=4, height=64, width=32, junk=2, distractors=2)
IMS_PER_BATCH, NUM_INSTANCE = 16, 4  # 64 target images: 4 steps per epoch
KILL_EPOCH, KILL_STEP = 1, 2  # inside the second (last) epoch, after 2 of its 4 steps


# demo.yml's model shrunk to 1 block of width 32 (as tests/sage/test_pipeline.py), seeded
TINY_MODEL = [
    "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.TIMM_VIT.DEPTH", "1", "MODEL.BACKBONE.TIMM_VIT.EMBED_DIM", "32",
    "MODEL.BACKBONE.TIMM_VIT.NUM_HEADS", "2", "MODEL.BACKBONE.FEAT_DIM", "32",
    "DATALOADER.NUM_WORKERS", "0", "DATALOADER.NUM_INSTANCE", str(NUM_INSTANCE),
    "SOLVER.IMS_PER_BATCH", str(IMS_PER_BATCH), "SOLVER.MAX_EPOCH", "1", "SOLVER.CHECKPOINT_PERIOD", "1",
    "SOLVER.WARMUP_ITERS", "0", "TEST.IMS_PER_BATCH", "64",
    "PLUGINS.SEED", "0",
]


def opts(output_dir) -> list:
    stage = ["SOLVER.MAX_EPOCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.IMS_PER_BATCH", str(IMS_PER_BATCH),
             "SOLVER.WARMUP_ITERS", "0"]
    return [
        *TINY_MODEL,
        "PLUGINS.PSEUDO_LABEL.K1", "6", "PLUGINS.PSEUDO_LABEL.K2", "3", "PLUGINS.PSEUDO_LABEL.EPS", "0.5",
        "PLUGINS.PSEUDO_LABEL.MIN_SAMPLES", "2", "PLUGINS.PSEUDO_LABEL.FEATURE_BATCH", "64",
        "SAGE.SOURCES", '("SynthReIDA", "SynthReIDB")', "SAGE.SOURCE_TAGS", '("a", "b")',
        "SAGE.PRETRAIN_DATASETS", "()",
        "SAGE.STAGE1_OPTS", str(stage), "SAGE.STAGE2_OPTS", str(stage + ["SOLVER.BASE_LR", "0.01"]),
        # LoRA-Avg: a static merge with BatchNorm re-estimation (draws random numbers between stages 1 and 2)
        "SAGE.BASELINES", '("lora_avg", "mole")', "SAGE.BLEND", "False", "SAGE.LEAVE_ONE_OUT", "False",
        "SAGE.ANALYZE", "False", "OUTPUT_DIR", str(output_dir),
    ]


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing on the way up handles it."""


def kill_inside(monkeypatch, folder: Path):
    """The next run dies in ``folder``'s stage at step KILL_STEP of epoch KILL_EPOCH, running no after-train hook."""
    run_step = DefaultTrainer.run_step

    def dying_run_step(trainer):
        if (trainer.cfg.OUTPUT_DIR == str(folder) and trainer.epoch == KILL_EPOCH
                and trainer.iter == KILL_EPOCH * trainer.iters_per_epoch + KILL_STEP):
            trainer._hooks = []
            raise Killed(str(folder))
        return run_step(trainer)

    monkeypatch.setattr(DefaultTrainer, "run_step", dying_run_step)


def assert_killed_inside(folder: Path):
    assert (folder / f"model_{KILL_EPOCH - 1:04d}.pth").is_file(), "the finished epoch's checkpoint"
    assert (folder / "last_checkpoint").read_text().strip() == f"model_{KILL_EPOCH - 1:04d}.pth"
    assert not (folder / DONE_FILE).exists() and not (folder / "model_final.pth").exists()


def _tensors(path: Path) -> dict:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return load_checkpoint_file(str(path))["model"]


def assert_same_tensors(a: Path, b: Path):
    ta, tb = _tensors(a), _tensors(b)
    assert sorted(ta) == sorted(tb), a.name
    unequal = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not unequal, f"{a.relative_to(a.parents[2])}: {unequal[:5]}"


@pytest.mark.slow
def test_killed_in_stage_1_and_stage_2_then_resumed_equals_uninterrupted(tmp_path, train_net_session):
    straight, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    with train_net_session(str(tmp_path / "datasets"), [(SynthReIDBase, "default_config", TINY_DOMAIN)]) as (main, mp):
        def run(out):
            return main(REPO / "configs" / "sage" / "demo.yml", *opts(out))

        expected = run(straight)
        assert list(expected) == ["source-only: SynthReIDA", "source-only: SynthReIDB", "expert: SynthReIDA",
                                  "expert: SynthReIDB", "LoRA-Avg", "MoLE", "SAGE"]

        with mp.context() as m:
            kill_inside(m, killed / "stage1" / "b")
            with pytest.raises(Killed):
                run(killed)
        assert_killed_inside(killed / "stage1" / "b")
        assert (killed / "stage1" / "a" / DONE_FILE).is_file()

        with mp.context() as m:
            kill_inside(m, killed / "stage2" / "sage")
            with pytest.raises(Killed):
                run(killed)  # resumes stage 1 (b) from its epoch-0 checkpoint, dies inside the SAGE gate training
        assert_killed_inside(killed / "stage2" / "sage")
        assert (killed / "stage1" / "b" / DONE_FILE).is_file() and (killed / "stage2" / "mole" / DONE_FILE).is_file()

        resumed = run(killed)

    assert resumed == expected
    assert json.loads((killed / "results.json").read_text()) == json.loads((straight / "results.json").read_text())
    for name in ("adapter_model.safetensors", "neck.safetensors"):
        assert_same_tensors(straight / "stage1" / "b" / "expert" / name, killed / "stage1" / "b" / "expert" / name)
    gate = Path("stage2") / "sage" / "model_final.pth"
    assert_same_tensors(straight / gate, killed / gate)



@pytest.mark.slow
def test_train_net_resume_equals_uninterrupted(tmp_path, train_net_session):
    """One fast-reid DefaultTrainer run by train_net (the tiny ViT of demo.yml on SynthReIDA: identity sampler,
    flip + padding + crop, 2 loader workers) killed inside epoch 1 and continued with ``--resume`` ends with the
    uninterrupted run's weights and scores."""
    def args(out):
        return [*TINY_MODEL, "PLUGINS.TRAINER", "DefaultTrainer", "DATASETS.NAMES", '("SynthReIDA",)',
                "DATASETS.TESTS", '("SynthReIDA",)', "SOLVER.MAX_EPOCH", "2", "SOLVER.WARMUP_ITERS", "2",
                "TEST.EVAL_PERIOD", "2", "DATALOADER.NUM_WORKERS", "2", "OUTPUT_DIR", str(out)]

    straight, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    for out in (straight, killed):
        out.mkdir()  # train_net's default_setup (skipped in tests) would create it
    config = REPO / "configs" / "sage" / "demo.yml"
    with train_net_session(str(tmp_path / "datasets"), [(SynthReIDBase, "default_config", TINY_DOMAIN)]) as (main, mp):
        expected = main(config, *args(straight))
        with mp.context() as m:
            kill_inside(m, killed)
            with pytest.raises(Killed):
                main(config, *args(killed))
        assert_killed_inside(killed)
        resumed = main(config, "--resume", *args(killed))
    assert resumed == expected
    assert_same_tensors(straight / "model_final.pth", killed / "model_final.pth")
