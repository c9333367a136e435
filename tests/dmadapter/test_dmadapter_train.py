"""DM-Adapter end to end through tools/train_net.py on a small procedural text dataset (random-init tiny CLIP):
training with best-on-validation selection, ``--eval-only`` reloading model_best.pth, and a run killed after its
second epoch and resumed ending with the same weights as an uninterrupted one."""
from __future__ import annotations

import json
import os

import pytest
import torch

from plugins.data.synthetic import SynthConfig
from plugins.dmadapter.trainer import BEST_FILE, BEST_STATE, DMAdapterTrainer, lr_factor

SMALL = SynthConfig(train_ids=8, test_ids=4, images_per_id=2, num_cameras=2, junk=0, distractors=0)
OPTS = ["MODEL.BACKBONE.CLIP.WEIGHTS", "", "MODEL.BACKBONE.PRETRAIN", "False", "INPUT.SIZE_TRAIN", "[64, 32]",
        "INPUT.SIZE_TEST", "[64, 32]", "SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_EPOCH", "3",
        "DMADAPTER.WARMUP_EPOCHS", "1", "TEST.EVAL_PERIOD", "1", "SOLVER.CHECKPOINT_PERIOD", "1",
        "DATALOADER.NUM_WORKERS", "0", "TEST.IMS_PER_BATCH", "16"]


def test_schedule_is_irra_warmup_then_cosine():
    kw = dict(max_epoch=60, warmup_epochs=5, warmup_factor=0.1, min_ratio=0.0)
    assert lr_factor(0, **kw) == pytest.approx(0.1)
    assert lr_factor(1, **kw) == pytest.approx(0.1 * 0.8 + 0.2)
    assert lr_factor(5, **kw) == pytest.approx(1.0)
    assert lr_factor(5 + 55 // 2, **kw) == pytest.approx((1 + torch.cos(torch.tensor(27 / 55 * torch.pi)).item()) / 2)


def _final_weights(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow
def test_train_select_eval_only_and_resume(train_net_session, tmp_path, repo_root, monkeypatch):
    import plugins.data.datasets.synthetic_text as synthetic_text

    config = repo_root / "configs" / "dmadapter" / "demo.yml"
    patches = [(synthetic_text.SynthPedesA, "default_config", SMALL)]
    with train_net_session(str(tmp_path / "datasets"), patches) as (main, mp):
        out = str(tmp_path / "run")
        results = main(config, *OPTS, "OUTPUT_DIR", out)
        assert set(results) >= {"R1", "R5", "R10", "mAP", "mINP"}
        assert results["num_captions"] == 2 * 2 * 2 and results["num_images"] == 2 * 2  # the test split (2 ids)
        best = json.load(open(os.path.join(out, BEST_STATE)))
        assert best["split"] == "val" and best["metric"] == "R1" and 1 <= best["epoch"] <= 3
        # --eval-only on the saved best model reproduces the final (best-model) test numbers
        again = main(config, "--eval-only", *OPTS, "OUTPUT_DIR", out, "MODEL.WEIGHTS", os.path.join(out, BEST_FILE))
        assert {k: round(v, 6) for k, v in again.items()} == {k: round(v, 6) for k, v in results.items()}

        # a run killed at the start of its third epoch, then resumed, ends as the uninterrupted run
        killed = str(tmp_path / "killed")
        calls = {"n": 0}
        original = DMAdapterTrainer.run_step

        def dying_step(self):
            if self.iter == 2 * self.iters_per_epoch:
                raise RuntimeError("killed")
            calls["n"] += 1
            return original(self)

        mp.setattr(DMAdapterTrainer, "run_step", dying_step)
        with pytest.raises(RuntimeError, match="killed"):
            main(config, *OPTS, "OUTPUT_DIR", killed)
        mp.setattr(DMAdapterTrainer, "run_step", original)
        assert os.path.isfile(os.path.join(killed, "model_0001.pth"))
        best_before = json.load(open(os.path.join(killed, BEST_STATE)))
        main(config, "--resume", *OPTS, "OUTPUT_DIR", killed)
        ours, ref = _final_weights(os.path.join(killed, "model_final.pth")), _final_weights(
            os.path.join(out, "model_final.pth"))
        assert ours.keys() == ref.keys()
        assert all(torch.equal(ours[k], ref[k]) for k in ref)
        best_after = json.load(open(os.path.join(killed, BEST_STATE)))
        assert best_after["score"] >= best_before["score"]
