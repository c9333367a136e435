"""plugins.engine.models.require_meta_arch: the method trainers' check of the model their config builds."""
import pytest
from torch import nn

from plugins.dmadapter.trainer import DMAdapterTrainer
from plugins.engine.models import require_meta_arch


def test_passes_the_expected_model_through_and_names_a_wrong_one():
    model = nn.Linear(2, 2)
    assert require_meta_arch(model, nn.Linear, "T") is model
    with pytest.raises(TypeError, match="T trains MODEL.META_ARCHITECTURE Conv1d, got Linear"):
        require_meta_arch(model, nn.Conv1d, "T")


def test_a_method_trainer_refuses_another_meta_architecture():
    from fastreid.config import get_cfg

    from plugins.config import add_plugins_config

    cfg = get_cfg()
    add_plugins_config(cfg)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", False, "MODEL.BACKBONE.DEPTH", "18x",
                         "MODEL.BACKBONE.FEAT_DIM", 512, "MODEL.HEADS.NUM_CLASSES", 4])
    with pytest.raises(TypeError, match="DMAdapterTrainer trains MODEL.META_ARCHITECTURE DMAdapter, got Baseline"):
        DMAdapterTrainer.build_model(cfg)
