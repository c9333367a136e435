"""MoSAIC-ReID config keys (``add_mosaic_config``). The paper publishes no code: every choice it leaves open is a
key here, with the paper's setting as the default where it gives one. CLIP-ReID's keys (``CLIPREID.*``) configure
the base model and its losses."""
from fastreid.config import CfgNode as CN

__all__ = ["add_mosaic_config", "SWEEP_KINDS", "SWEEP_MODES"]

# Inclusion configurations the sweep can generate (MOSAIC.SWEEP.KINDS).
SWEEP_KINDS = {
    "all": "every study attribute",
    "none": "no attribute (the CLIP-ReID model itself)",
    "single": "each study attribute alone",
    "group": "each group: intrinsic, upper, lower, accessories, extrinsic (= upper + lower + accessories)",
    "leave_one_out": "all but one study attribute, for each",
}
SWEEP_MODES = ("test", "retrain", "both")


def add_mosaic_config(cfg):
    """Add the MoSAIC keys to a fast-reid config, in place."""
    cfg.MOSAIC = CN()
    # Experts in the last K transformer blocks (paper: K = 12 of ViT-B/16; Table 6 ablates 1, 2, 4, 8, 12).
    cfg.MOSAIC.LAST_K = 12
    # Rank r of every expert's low-rank map (paper: 16) and its LoRA scaling numerator (scaling = ALPHA / RANK).
    cfg.MOSAIC.RANK = 16
    cfg.MOSAIC.ALPHA = 16.0
    # One token per expert: "mean" over the block's tokens (the paper's "pooling over tokens") or "cls".
    cfg.MOSAIC.TOKEN_POOL = "mean"
    # Active experts' tokens -> the summary token: "mean" (paper's setting) or "max".
    cfg.MOSAIC.EXPERT_POOL = "mean"
    # The summary token is added after the FFN to "all" tokens (the paper's "added to the token sequence") or
    # to the "cls" token only.
    cfg.MOSAIC.ADD_TO = "all"
    # Study attributes whose experts are on (the inclusion configuration; reader group names, e.g. ["gender",
    # "upper_colour"]); empty: all. The schema is printed at start-up.
    cfg.MOSAIC.INCLUDE = []
    # Routing at test: "oracle" (ground-truth attributes from batch["attributes"], the paper) or "predicted" (the
    # attribute head's predictions; needs ATTRIBUTE_HEAD). Training always routes with the oracle.
    cfg.MOSAIC.ROUTER = "oracle"
    # Train a linear attribute head on the frozen CLIP-ReID feature (one logit per expert, BCE) so that the model
    # can also route without test attributes; costs one extra no-grad forward of the tower per step.
    cfg.MOSAIC.ATTRIBUTE_HEAD = True
    cfg.MOSAIC.ATTRIBUTE_WEIGHT = 1.0
    # Also train the BNNecks and classifiers of the CLIP-ReID base (paper: only the experts train).
    cfg.MOSAIC.TRAIN_HEADS = False
    # How annotations map to experts (plugins/mosaic/schema.py). MULTI_HOT: a colour group with several colours
    # marked activates "all" of them, the "first", or "none". NO_VALUE: a colour group with no colour marked is
    # inactive ("none") or has its own "expert". MISSING: a field not annotated (-1: DukeMTMC "top" of two ids;
    # every field of Market's gallery distractors 0000, which the readers keep) leaves its group inactive ("skip")
    # or is an "error" (only for data without distractors). Junk images (-1) are dropped by the readers, as
    # fast-reid's Market1501 does. The defaults give the paper's counts: Market-1501 35 experts, DukeMTMC 26.
    cfg.MOSAIC.POLICY = CN()
    cfg.MOSAIC.POLICY.MULTI_HOT = "all"
    cfg.MOSAIC.POLICY.NO_VALUE = "none"
    cfg.MOSAIC.POLICY.MISSING = "skip"

    # Pipeline (PLUGINS.TRAINER MoSAICPipeline): CLIP-ReID stages 1-2, then MoSAIC on the stage-2 model.
    # Solver overrides of the MoSAIC stage (KEY VALUE ...; the paper: AdamW 1e-4, 120 epochs, x0.1 at 90/110).
    cfg.MOSAIC.STAGE_OPTS = []

    # The attribute-importance study (paper Sec. 4.4): evaluate under many inclusion configurations.
    cfg.MOSAIC.SWEEP = CN()
    cfg.MOSAIC.SWEEP.ENABLED = False
    # Which configurations (SWEEP_KINDS above), plus EXTRA ones written "name=attr+attr+...".
    cfg.MOSAIC.SWEEP.KINDS = ["all", "none", "single", "group", "leave_one_out"]
    cfg.MOSAIC.SWEEP.EXTRA = []
    # "test": one model trained with every attribute, groups switched off at test (the default: the paper's
    # Table 3 runs are ambiguous; this one is cheap and isolates the test-time effect); "retrain": one model
    # trained per configuration with only its experts; "both".
    cfg.MOSAIC.SWEEP.MODE = "test"
    # Configurations retrained in "retrain"/"both" mode (names); empty: all of them.
    cfg.MOSAIC.SWEEP.RETRAIN = []
    # Solver overrides of the retrained models (KEY VALUE ...), applied after STAGE_OPTS.
    cfg.MOSAIC.SWEEP.RETRAIN_OPTS = []
    # Analysis of the sweep (tools/attribute_importance.py): random-forest / permutation / SHAP seed and sizes.
    cfg.MOSAIC.SWEEP.SEED = 0
    cfg.MOSAIC.SWEEP.N_ESTIMATORS = 500
    cfg.MOSAIC.SWEEP.N_REPEATS = 30
    return cfg
