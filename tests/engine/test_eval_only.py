"""``--eval-only`` never scores the wrong model and never writes over the run (plugins/engine/eval_only.py)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from plugins.engine.eval_only import EvalOnlyError, check_eval_request, eval_record_dir, load_eval_weights
from plugins.config import setup_cfg


class Net(nn.Module):
    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
        self.classifier = nn.Linear(5, num_classes, bias=False)


def save(path, state):
    torch.save({"model": state}, path)
    return str(path)


def test_exact_checkpoint_loads_every_tensor(tmp_path):
    src, dst = Net(), Net()
    skipped = load_eval_weights(dst, save(tmp_path / "w.pth", src.state_dict()))
    assert skipped == []
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_module_prefix_is_stripped(tmp_path):
    src, dst = Net(), Net()
    load_eval_weights(dst, save(tmp_path / "w.pth", {f"module.{k}": v for k, v in src.state_dict().items()}))
    assert torch.equal(dst.backbone[0].weight, src.backbone[0].weight)


def test_classifier_of_another_identity_count_is_skipped_and_logged(tmp_path, caplog):
    src, dst = Net(num_classes=7), Net(num_classes=3)
    before = dst.classifier.weight.clone()
    with caplog.at_level("INFO", logger="fastreid"):
        skipped = load_eval_weights(dst, save(tmp_path / "w.pth", src.state_dict()))
    assert skipped == ["classifier.weight"]
    assert torch.equal(dst.classifier.weight, before)
    assert torch.equal(dst.backbone[0].weight, src.backbone[0].weight)
    assert "classifier.weight" in caplog.text


@pytest.mark.parametrize("edit, words", [
    (lambda s: s.pop("backbone.0.weight"), ["missing from the checkpoint", "backbone.0.weight"]),
    (lambda s: s.__setitem__("head.extra", torch.zeros(2)), ["not in the model", "head.extra"]),
    (lambda s: s.__setitem__("backbone.0.weight", torch.zeros(5, 6)), ["of another shape", "backbone.0.weight"]),
])
def test_anything_else_that_does_not_fit_fails_naming_file_and_key(tmp_path, edit, words):
    state = Net().state_dict()
    edit(state)
    path = save(tmp_path / "bad.pth", state)
    with pytest.raises(EvalOnlyError) as err:
        load_eval_weights(Net(), path)
    for w in [path, *words]:
        assert w in str(err.value)


def test_unrelated_checkpoint_fails(tmp_path):
    path = save(tmp_path / "other.pth", {"conv.weight": torch.zeros(3, 3), "fc.bias": torch.zeros(2)})
    with pytest.raises(EvalOnlyError, match="missing from the checkpoint.*not in the model"):
        load_eval_weights(Net(), path)


class PlainTrainer:
    pass


class RunTrainer:
    BUILDS_TRAINED_MODEL = True


def _cfg(**kv):
    cfg = setup_cfg(freeze=False)
    for k, v in kv.items():
        node = cfg
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return cfg


def test_no_weights_is_an_error():
    with pytest.raises(EvalOnlyError, match="needs MODEL.WEIGHTS"):
        check_eval_request(_cfg(**{"MODEL.WEIGHTS": ""}), PlainTrainer)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        check_eval_request(_cfg(**{"MODEL.WEIGHTS": str(tmp_path / "nope.pth")}), PlainTrainer)


def test_run_rebuilding_trainer_refuses_weights_on_top_and_a_missing_run(tmp_path):
    w = save(tmp_path / "w.pth", Net().state_dict())
    with pytest.raises(EvalOnlyError, match="would be loaded over it"):
        check_eval_request(_cfg(**{"MODEL.WEIGHTS": w, "OUTPUT_DIR": str(tmp_path)}), RunTrainer)
    with pytest.raises(EvalOnlyError, match="does not exist"):
        check_eval_request(_cfg(**{"MODEL.WEIGHTS": "", "OUTPUT_DIR": str(tmp_path / "typo")}), RunTrainer)
    assert not (tmp_path / "typo").exists()
    check_eval_request(_cfg(**{"MODEL.WEIGHTS": "", "OUTPUT_DIR": str(tmp_path)}), RunTrainer)


def test_record_dirs_never_collide(tmp_path):
    first = eval_record_dir(str(tmp_path), stamp="s")
    (tmp_path / "eval" / "s").mkdir(parents=True)
    assert first.endswith("s") and eval_record_dir(str(tmp_path), stamp="s").endswith("s-2")


SMALL = ["MODEL.BACKBONE.DEPTH", "18x", "DATASETS.TESTS", '("SynthReIDA",)', "DATALOADER.NUM_WORKERS", "0",
         "TEST.IMS_PER_BATCH", "64"]


def test_train_net_eval_only_is_strict_and_keeps_the_run_untouched(tmp_path, repo_root, train_net_session,
                                                                    datasets_outside_the_repository):
    """Through tools/train_net.py: no weights / wrong weights fail before scoring; a fitting checkpoint scores and
    its record goes to OUTPUT_DIR/eval/<stamp>/, the run's config.yaml unchanged."""
    from fastreid.modeling import build_model

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("the run's own config\n")
    cfg_file = repo_root / "configs" / "base" / "synthetic.yml"
    opts = ["OUTPUT_DIR", str(run), *SMALL]
    model = build_model(setup_cfg(str(cfg_file), opts))
    good = save(tmp_path / "model.pth", model.state_dict())
    wrong = save(tmp_path / "wrong.pth", {"backbone.conv1.weight": torch.zeros(1)})
    with train_net_session(datasets_outside_the_repository) as (main, _):
        with pytest.raises(EvalOnlyError, match="needs MODEL.WEIGHTS"):
            main(cfg_file, "--eval-only", *opts)
        with pytest.raises(EvalOnlyError, match="wrong.pth"):
            main(cfg_file, "--eval-only", *opts, "MODEL.WEIGHTS", wrong)
        results = main(cfg_file, "--eval-only", *opts, "MODEL.WEIGHTS", good)
    assert (run / "config.yaml").read_text() == "the run's own config\n"
    records = list((run / "eval").glob("*/results.json"))
    assert len(records) == 1
    saved = json.loads(records[0].read_text())
    assert saved["weights"] == good
    assert saved["results"]["mAP"] == pytest.approx(float(results["mAP"]))  # one test set: fast-reid's flat dict
