"""DM-Adapter keys (``add_dmadapter_config``): ``DMADAPTER.*``. One comment per key; the paper's symbol or the
official code's name in brackets. The CLIP towers are ``MODEL.BACKBONE.CLIP.*``; the solver is fast-reid's
``SOLVER.*`` (BASE_LR, WEIGHT_DECAY, BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS, MAX_EPOCH, IMS_PER_BATCH) plus the keys
below."""
from fastreid.config import CfgNode as CN

__all__ = ["add_dmadapter_config"]


def add_dmadapter_config(cfg):
    """Add ``cfg.DMADAPTER`` in place; returns ``cfg``."""
    cfg.DMADAPTER = CN()
    # n: experts per SMA (one SMA in every block of both towers). 1 = a single bottleneck adapter, no router
    # (the paper's "MLP-Adapter" ablation).
    cfg.DMADAPTER.NUM_EXPERTS = 6
    # k: experts kept per token (Top-K).
    cfg.DMADAPTER.TOP_K = 2
    # Router class in ROUTER_REGISTRY: "DomainAwareRouter" (DR: (1-a) LN3(x) W_g + a p W_d) or "SoftmaxTopKRouter"
    # (SMA without the domain prompt: LN3(x) W_g).
    cfg.DMADAPTER.ROUTER = "DomainAwareRouter"
    # Initial mixing scalar a of the domain-aware router [feed_forward.alpha = 0.5].
    cfg.DMADAPTER.ALPHA_INIT = 0.5
    # Expert bottleneck d / r: 768 -> 96 -> 768 (image), 512 -> 64 -> 512 (text).
    cfg.DMADAPTER.BOTTLENECK_RATIO = 8
    # s: scale of the SMA output added to the residual, image and text towers [0.1 and 4 in the official code].
    cfg.DMADAPTER.IMAGE_SCALE = 0.1
    cfg.DMADAPTER.TEXT_SCALE = 4.0
    # Weight of the load-balancing loss summed over all blocks of both towers [0.5]; 0 trains without it.
    cfg.DMADAPTER.AUX_WEIGHT = 0.5
    # Training text pass over all TEXT_CONTEXT_LENGTH positions, so that the load-balancing loss averages over the
    # caption padding too, as the official code (True); False runs up to the batch's longest caption only (same
    # features and SDM loss, a ~2x cheaper text pass, the aux loss over fewer padding tokens).
    cfg.DMADAPTER.AUX_FULL_CONTEXT = True
    # tau of the SDM loss: cosine similarities / tau [fixed 0.02, i.e. logit scale 50].
    cfg.DMADAPTER.TEMPERATURE = 0.02
    # BERT-style masking of the training captions (15%; 80% mask id, 10% random id, 10% kept; at least one per
    # caption). The official code always masks; the paper does not mention it.
    cfg.DMADAPTER.MASK_CAPTIONS = True
    cfg.DMADAPTER.MASK_PROB = 0.15
    # Mask token id [the official tokenizer's <|mask|> = 49405].
    cfg.DMADAPTER.MASK_TOKEN = 49405
    # Adam epsilon [1e-3 in the official solver]; betas (0.9, 0.999).
    cfg.DMADAPTER.ADAM_EPS = 1e-3
    # Warm-up epochs of the per-epoch schedule (linear from WARMUP_FACTOR x lr), then cosine to MIN_LR over the
    # remaining epochs of SOLVER.MAX_EPOCH [5 epochs from 0.1 x lr, cosine to 0].
    cfg.DMADAPTER.WARMUP_EPOCHS = 5
    cfg.DMADAPTER.WARMUP_FACTOR = 0.1
    cfg.DMADAPTER.MIN_LR = 0.0
    # Split of DATASETS.TESTS evaluated every TEST.EVAL_PERIOD epochs to choose the best checkpoint
    # (model_best.pth, by R@1): "val" (CUHK-PEDES, RSTPReid), or "" where there is none (ICFG-PEDES: the last
    # epoch's model is kept). Never the test split (the official code selects on it). The final evaluation and
    # --eval-only always use the test split.
    cfg.DMADAPTER.VAL_SPLIT = "val"
    # Captions per text-feature batch at evaluation (0: TEST.IMS_PER_BATCH).
    cfg.DMADAPTER.TEXT_BATCH = 0
    return cfg
