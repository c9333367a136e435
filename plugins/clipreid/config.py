"""CLIP-ReID config keys (``add_clipreid_config``); one comment per key, the paper's symbol or the official code's
key in brackets. The CLIP towers themselves are ``MODEL.BACKBONE.CLIP.*`` (plugins/modeling/config.py)."""
from fastreid.config import CfgNode as CN

__all__ = ["add_clipreid_config", "BASELINES"]

# Optional extra rows of the pipeline (CLIPREID.BASELINES): name -> what it trains.
BASELINES = {
    "no_i2t": "stage 2 without the image-to-text loss (no prompts needed)",
    "image_only": "fast-reid Baseline on the CLIP image tower (CLS, one BNNeck, CE + triplet)",
}


def add_clipreid_config(cfg):
    """Add the CLIP-ReID keys to a fast-reid config, in place."""
    cfg.CLIPREID = CN()
    # Identity prompt with placeholder words X, one learned token embedding each ("A photo of a X X X X person.").
    cfg.CLIPREID.PROMPT = "A photo of a X X X X person."
    # Std of the normal initialisation of the learned prompt tokens [PromptLearner: nn.init.normal_(std=0.02)].
    cfg.CLIPREID.PROMPT_INIT_STD = 0.02
    # Test feature: "before" = cat[CLS after ln_post, projected CLS] (the yml configs); "after" = the same through
    # the two BNNecks (the code default) [TEST.NECK_FEAT].
    cfg.CLIPREID.NECK_FEAT = "before"
    # Stage-2 loss weights [MODEL.ID_LOSS_WEIGHT, TRIPLET_LOSS_WEIGHT, I2T_LOSS_WEIGHT]: ID on both BNNeck outputs,
    # batch-hard triplet on the three CLS features, CE of the image-to-text logits. I2T 0 trains without prompts.
    cfg.CLIPREID.ID_WEIGHT = 0.25
    cfg.CLIPREID.TRIPLET_WEIGHT = 1.0
    cfg.CLIPREID.I2T_WEIGHT = 1.0
    # Label smoothing of the ID and i2t cross-entropies (CrossEntropyLabelSmooth, epsilon).
    cfg.CLIPREID.LABEL_SMOOTH = 0.1
    # Margin of the batch-hard triplet loss (no feature normalisation) [SOLVER.MARGIN].
    cfg.CLIPREID.TRIPLET_MARGIN = 0.3
    # Stage-2: the stage-1 prompt learner (safetensors); the pipeline sets it. Empty: the prompts of the model.
    cfg.CLIPREID.PROMPTS = ""

    cfg.CLIPREID.STAGE1 = CN()  # prompt learning on the frozen CLIP [SOLVER.STAGE1]
    cfg.CLIPREID.STAGE1.EPOCHS = 120  # [MAX_EPOCHS]
    cfg.CLIPREID.STAGE1.IMS_PER_BATCH = 64  # cached image features per step [IMS_PER_BATCH]
    cfg.CLIPREID.STAGE1.BASE_LR = 3.5e-4  # Adam [BASE_LR]
    cfg.CLIPREID.STAGE1.WEIGHT_DECAY = 1e-4  # [WEIGHT_DECAY]
    cfg.CLIPREID.STAGE1.WARMUP_EPOCHS = 5  # linear warm-up from WARMUP_LR [WARMUP_EPOCHS]
    cfg.CLIPREID.STAGE1.WARMUP_LR = 1e-5  # [WARMUP_LR_INIT]
    cfg.CLIPREID.STAGE1.MIN_LR = 1e-6  # cosine floor [LR_MIN]
    cfg.CLIPREID.STAGE1.CHECKPOINT_PERIOD = 10  # epochs between resumable checkpoints
    # Images per feature-extraction batch (0: TEST.IMS_PER_BATCH); features are computed once and cached.
    cfg.CLIPREID.STAGE1.FEATURE_BATCH = 0
    # Extract the cached image features and the text-feature bank under fp16 autocast on CUDA, as the official
    # code does (ignored on CPU).
    cfg.CLIPREID.STAGE1.AMP = True

    # Pipeline (PLUGINS.TRAINER CLIPReIDPipeline): solver overrides of stage 2 (KEY VALUE ...), extra rows.
    cfg.CLIPREID.STAGE2_OPTS = []
    cfg.CLIPREID.BASELINES = []
    # Solver overrides of the "image_only" baseline row (KEY VALUE ...), applied after STAGE2_OPTS.
    cfg.CLIPREID.BASELINE_OPTS = []
    return cfg
