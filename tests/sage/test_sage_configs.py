"""The paper's SAGE configs build the paper's models: ViT-B/16 at 256x128 (129 tokens), r=8 experts of 1,179,648
parameters (r=4: half), a SAGE gate of 10,699,776 parameters; and the pipeline accepts every config."""
from pathlib import Path

import pytest
import torch
from fastreid.config import get_cfg
from fastreid.modeling import build_model

import plugins.sage  # noqa: F401  (registers the SAGE trainers)
from plugins.config import add_plugins_config
from plugins.sage.builders import _lora_kwargs, num_tokens_of, vit_of
from plugins.sage.config import add_sage_config
from plugins.sage.gated_model import build_gated_vit, gate_parameters
from plugins.sage.pipeline import SAGEPipeline
from plugins.tuners.inject import inject_lora, lora_factors_from_peft, lora_parameter_count, remove_peft_layers

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "sage"
# file -> (rank, alpha, number of sources) from the paper's settings (sage.md)
PAPER = {"msmt.yml": (8, 32.0, 3), "duke.yml": (4, 16.0, 3), "market.yml": (4, 16.0, 3),
         "msmt_cam5.yml": (8, 32.0, 4), "msmt_cam6.yml": (8, 32.0, 4),
         "msmt_duke_iust_market.yml": (8, 32.0, 3), "msmt_ocduke_iust_market.yml": (8, 32.0, 3)}


def load(name, tmp_path):
    cfg = add_sage_config(add_plugins_config(get_cfg()))
    cfg.merge_from_file(str(CONFIGS / name))
    # offline and on CPU: random init instead of ImageNet weights, one placeholder class
    cfg.merge_from_list(["MODEL.BACKBONE.PRETRAIN", False, "MODEL.DEVICE", "cpu", "MODEL.HEADS.NUM_CLASSES", 1,
                         "OUTPUT_DIR", str(tmp_path)])
    return cfg


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_settings(name, tmp_path):
    cfg = load(name, tmp_path)
    rank, alpha, k = PAPER[name]
    assert (cfg.SAGE.LORA.RANK, cfg.SAGE.LORA.ALPHA, cfg.SAGE.LORA.DROPOUT) == (rank, alpha, 0.05)
    assert len(cfg.SAGE.SOURCES) == k and cfg.DATASETS.NAMES == cfg.DATASETS.TESTS
    assert cfg.DATASETS.NAMES[0] not in cfg.SAGE.SOURCES
    assert tuple(cfg.MODEL.BACKBONE.TIMM_VIT.IMG_SIZE) == (256, 128)
    assert (cfg.SOLVER.OPT, cfg.SOLVER.BASE_LR, cfg.SOLVER.IMS_PER_BATCH) == ("SGD", 0.008, 64)
    stage2 = dict(zip(cfg.SAGE.STAGE2_OPTS[::2], cfg.SAGE.STAGE2_OPTS[1::2]))
    assert stage2["SOLVER.MAX_EPOCH"] == "1" and stage2["SOLVER.BASE_LR"] == "0.08"
    pipeline = SAGEPipeline(cfg)  # validates sources, tags, baselines, gate kind
    # the paper: 70 epochs, SGD, a FIXED lr of 0.008 for stages 0 and 1; one epoch in stage 2 (lr 0.08: the code)
    for stage, epochs, lr in ((0, 70, 0.008), (1, 70, 0.008), (2, 1, 0.08)):
        c = pipeline.stage_cfg(stage, str(tmp_path / f"s{stage}"), trainer="DefaultTrainer")
        assert (c.SOLVER.OPT, c.SOLVER.MAX_EPOCH, c.SOLVER.BASE_LR) == ("SGD", epochs, lr), stage
        assert (c.SOLVER.SCHED, list(c.SOLVER.STEPS), c.SOLVER.WARMUP_ITERS) == ("MultiStepLR", [], 0), stage
    assert len(pipeline.tags) == k


@pytest.mark.parametrize("name", ["msmt.yml", "market.yml"])
def test_expert_and_gate_sizes(name, tmp_path):
    """Golden sizes for ViT-B/16 at 256x128: expert 12*r*(768+2304+768+768+768+3072+3072+768), gate 10,699,776."""
    cfg = load(name, tmp_path)
    model = build_model(cfg)
    vit = vit_of(model)
    assert num_tokens_of(vit) == 129
    inject_lora(vit, **_lora_kwargs(cfg))
    rank = cfg.SAGE.LORA.RANK
    assert lora_parameter_count(vit) == 147_456 * rank  # 1,179,648 at r=8
    factors = lora_factors_from_peft(vit, "default")
    remove_peft_layers(vit)
    with torch.no_grad():
        build_gated_vit(vit, experts=[factors] * 3, gate="sage", num_tokens=129)
    assert gate_parameters(model) == {"weight": 10_699_776, "tau": 48}
