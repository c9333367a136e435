"""DeMo's config keys (``add_demo_config``): ``DEMO.*``, one comment per key naming the paper's symbol or the
official config key in brackets. The shared encoder is ``MODEL.BACKBONE.CLIP.*`` (or ``TIMM_VIT.*``), its camera
embedding ``MODEL.BACKBONE.CLIP.NUM_CAMERAS`` and ``MODEL.BACKBONE.SIE_COE``; the modalities are
``PLUGINS.DATA.MODALITIES`` (R, N, T order) and ``PLUGINS.DATA.SYNC_MODALITY_TRANSFORMS``."""
from fastreid.config import CfgNode as CN

__all__ = ["add_demo_config", "LADDER_STEPS", "PROTOCOLS"]

# Table 5's ablation ladder: step -> (PIFE, HDM, ATMoE, test feature). D and E are the same trained model.
LADDER_STEPS = {
    "A": (False, False, False, "concat"),  # baseline: the three CLS tokens
    "B": (True, False, False, "concat"),   # + PIFE
    "C": (True, True, False, "concat"),    # + HDM (moe = cat of the 7 decoupled features)
    "D": (True, True, True, "moe"),        # + ATMoE, inferring with f (the moe feature) only
    "E": (True, True, True, "concat"),     # + ATMoE, inferring with cat[f_R, f_N, f_T, f]
}
# Retrieval protocols of DEMO.TEST.PROTOCOL (plugins.evaluation): "market" removes same-id same-camera gallery
# items (RGBNT201 with test as query and gallery; RGBNT100), "msvr310" same-id same-SCENE items.
PROTOCOLS = ("market", "msvr310")


def add_demo_config(cfg):
    """Add ``DEMO.*`` to a fast-reid config, in place."""
    cfg.DEMO = CN()
    # Shared visual encoder: "clip" (open_clip tower of MODEL.BACKBONE.CLIP; CLIP ViT-B/16, the paper's main
    # model) or "timm" (MODEL.BACKBONE.TIMM_VIT; ImageNet ViT-B/16, the paper's ViT variant).
    cfg.DEMO.BACKBONE = "clip"
    # PIFE: f_m = QuickGELU(Linear(LN(cat[CLS_m, mean patches_m]))) per modality; off: f_m = CLS_m.
    cfg.DEMO.PIFE = True
    # HDM: 7 queries Q_{m1}, Q_{m2}, Q_{m3} cross-attending to their modality token sets -> D (7 x C).
    cfg.DEMO.HDM = True
    # HDM cross-attention heads and attention dropout [nn.MultiheadAttention(512, 8, dropout=0.1)].
    cfg.DEMO.HDM_HEADS = 8
    cfg.DEMO.HDM_DROPOUT = 0.1
    # ATMoE: attention-triggered gate over experts on the decoupled features -> f (n_d C).
    cfg.DEMO.ATMOE = True
    # H, the heads of the ATMoE gate (c = C / H per chunk) [MODEL.HEAD]; 4 on RGBNT201, 8 on the vehicles.
    cfg.DEMO.MOE_HEADS = 4
    # Gate of Table 6: "attention" (ATMoE) or "simple" (linear + softmax on cat D; needs MOE_HEADS 1).
    cfg.DEMO.GATE = "attention"
    # Weighted experts: "concat" (Table 6's ^C, the paper's model) or "add" (^A).
    cfg.DEMO.COMBINE = "concat"
    # Test feature: "concat" = cat[f_R, f_N, f_T, f] (Table 5 E) or "moe" = f only (Table 5 D).
    cfg.DEMO.TEST_FEATURE = "concat"
    # Heads: "joint" = one BNNeck + classifier on cat[f_R, f_N, f_T] (RGBNT201) or "per_modality" = one each on
    # f_R, f_N, f_T (the official vehicle configs); plus one on f when it exists.
    cfg.DEMO.HEADS = "joint"
    # Loss weights [MODEL.ID_LOSS_WEIGHT, TRIPLET_LOSS_WEIGHT], CE label smoothing epsilon, triplet margin
    # (0 = soft margin, as the official TripletLoss without MARGIN).
    cfg.DEMO.ID_WEIGHT = 0.25
    cfg.DEMO.TRIPLET_WEIGHT = 1.0
    cfg.DEMO.LABEL_SMOOTH = 0.1
    cfg.DEMO.TRIPLET_MARGIN = 0.0

    cfg.DEMO.SOLVER = CN()  # Adam [SOLVER.OPTIMIZER_NAME Adam]; new modules at SOLVER.BASE_LR (3.5e-4)
    # Learning rate of the visual encoder (not its camera embedding) [the official 5e-6 for CLIP].
    cfg.DEMO.SOLVER.BACKBONE_LR = 5e-6
    # Linear warm-up over this many epochs, every group from WARMUP_LR (the backbone warms DOWN) [WARMUP_EPOCHS].
    cfg.DEMO.SOLVER.WARMUP_EPOCHS = 10
    cfg.DEMO.SOLVER.WARMUP_LR = 3.5e-5
    # Cosine floor [LR_MIN].
    cfg.DEMO.SOLVER.MIN_LR = 3.5e-7
    # timm's per-epoch lr noise: each epoch's lr times a factor in [1 - NOISE_PCT, 1 + NOISE_PCT], drawn with
    # seed NOISE_SEED + epoch (the official scheduler); NOISE_PCT 0 turns it off.
    cfg.DEMO.SOLVER.NOISE_PCT = 0.67
    cfg.DEMO.SOLVER.NOISE_SEED = 42

    cfg.DEMO.TEST = CN()
    # Retrieval protocol (one of config.PROTOCOLS): "market" (RGBNT201, RGBNT100) or "msvr310" (same id AND
    # same scene removed; scenes from the reader's items).
    cfg.DEMO.TEST.PROTOCOL = "market"
    # Modalities replaced by zeros after normalisation in query and gallery (Tables 3-4), e.g. ["NI"].
    cfg.DEMO.TEST.MISSING = []

    cfg.DEMO.LADDER = CN()  # DeMoLadder pipeline (PLUGINS.TRAINER DeMoLadder): Table 5 + Tables 3-4 in one run
    # Ladder steps to train and evaluate (keys of LADDER_STEPS; D reuses E's trained model).
    cfg.DEMO.LADDER.STEPS = ["A", "B", "C", "D", "E"]
    # Step whose model gets the missing-modality table ("" = none).
    cfg.DEMO.LADDER.MISSING_TABLE_STEP = "E"
    return cfg
