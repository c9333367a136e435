"""MoE-KD keys (``add_moekd_config``: ``MOEKD.*``), each named after the paper's symbol (Shoko & van Zyl, SACAIR
2025). The CLIP expert is ``MODEL.BACKBONE.CLIP.*`` (NAME, WEIGHTS, QUICK_GELU: the project's one CLIP source);
the student and the ResNet-50 base of the ladder are fast-reid's ``build_resnet_backbone`` (``MODEL.BACKBONE.*``,
DEPTH overridden per model below); ``MODEL.PIXEL_MEAN/STD`` normalise for the student, base and gate stem."""
from fastreid.config import CfgNode as CN

__all__ = ["add_moekd_config", "ROWS"]

# Rows of the pipeline (MOEKD.ROWS), in Table 5's order: name -> what trains.
ROWS = {
    "base": "Base Model: fast-reid Baseline on ResNet-50 (MOEKD.BASE_DEPTH; ID + triplet)",
    "clip_concat": "+ CLIP Expert: [ResNet-50, phi_CLIP(CLIP)] concatenated -> FC(4096 -> 2048)",
    "align_average": "+ ALIGN Expert: mean(ResNet-50, phi_CLIP, phi_ALIGN) -> FC(2048 -> 2048)",
    "moe": "+ MoE: gated top-1 mixture of CLIP and ALIGN (the teacher)",
    "kd": "+ KD: ResNet-18 student distilled from the 'moe' teacher",
}


def add_moekd_config(cfg):
    """Add the MoE-KD keys to a fast-reid config, in place."""
    cfg.MOEKD = CN()
    # Fusion of the teacher (MoEKDTeacher): "moe" (the paper's gated mixture), "concat" / "average" (Table 5 rows).
    cfg.MOEKD.FUSION = "moe"
    # D: width of the adapted expert features and of the teacher feature (the paper's common 2048-d space).
    cfg.MOEKD.FEAT_DIM = 2048
    # Input: aspect-preserving resize + zero padding to INPUT.SIZE_* (the paper's 256x256 zero-padded input).
    cfg.MOEKD.PAD_TO_SQUARE = True
    # Pipeline rows (PLUGINS.TRAINER MoEKDPipeline): names of ROWS above ("kd" needs "moe").
    cfg.MOEKD.ROWS = ["moe", "kd"]
    # Config overrides (KEY VALUE ...) of the teacher row ("moe").
    cfg.MOEKD.TEACHER_OPTS = []
    # Config overrides of the other Table 5 rows ("base", "clip_concat", "align_average").
    cfg.MOEKD.LADDER_OPTS = []
    # Solver overrides of the student row ("kd"): the paper trains the student 80 epochs, the teacher 60.
    cfg.MOEKD.STUDENT_OPTS = []

    # Seed of the random initialisation of an expert given no weights (tests, the demo's ALIGN): a frozen expert
    # must be the same fixed feature extractor in every stage that builds it.
    cfg.MOEKD.EXPERT_INIT_SEED = 0

    cfg.MOEKD.CLIP = CN()  # E_CLIP (open_clip, MODEL.BACKBONE.CLIP.*) and phi_CLIP
    # 0-255 normalisation of the CLIP expert: OpenAI's CLIP statistics (the tiny CLIP: 127.5 / 127.5).
    cfg.MOEKD.CLIP.PIXEL_MEAN = [122.770938, 116.7460125, 104.09373615]
    cfg.MOEKD.CLIP.PIXEL_STD = [68.5005327, 66.6321579, 70.32316305]
    # phi_CLIP: FC(D_clip -> HIDDEN) + ReLU + Dropout(DROPOUT) + FC(HIDDEN -> FEAT_DIM) (768 -> 1024 -> 2048).
    cfg.MOEKD.CLIP.ADAPTER_HIDDEN = 1024
    cfg.MOEKD.CLIP.DROPOUT = 0.2

    cfg.MOEKD.ALIGN = CN()  # E_ALIGN (transformers AlignVisionModel) and phi_ALIGN: FC(pooled -> FEAT_DIM)
    # Local folder of an ALIGN / AlignVisionModel checkpoint (save_pretrained layout); "" = random init.
    cfg.MOEKD.ALIGN.WEIGHTS = ""
    # AlignVisionConfig overrides for random init (0 = ALIGN-base's: width 2.0, depth 3.1; pooled 640-d).
    cfg.MOEKD.ALIGN.WIDTH_COEFFICIENT = 0.0
    cfg.MOEKD.ALIGN.DEPTH_COEFFICIENT = 0.0
    # 0-255 normalisation: ALIGN's processor maps pixels to [-1, 1].
    cfg.MOEKD.ALIGN.PIXEL_MEAN = [127.5, 127.5, 127.5]
    cfg.MOEKD.ALIGN.PIXEL_STD = [127.5, 127.5, 127.5]

    cfg.MOEKD.GATE = CN()  # h(x), Eq. 7-9
    # Gate input: "experts" = [f_CLIP, f_ALIGN] (4096-d, the paper; both experts always run) or "image" (a small
    # conv stem on the downsampled image: only the chosen expert runs per sample at inference).
    cfg.MOEKD.GATE.INPUT = "experts"
    # Hidden widths of W_1, W_2 (W_3 maps to the K = 2 experts).
    cfg.MOEKD.GATE.HIDDEN = [512, 256]
    # tau_train and tau_test of Eq. 8.
    cfg.MOEKD.GATE.TAU_TRAIN = 1.0
    cfg.MOEKD.GATE.TAU_TEST = 0.5
    # Eq. 9 forward with the softmax's gradient (straight-through); False: the soft mixture g (dense).
    cfg.MOEKD.GATE.STRAIGHT_THROUGH = True
    # The "image" gate stem: downsampling size (H, W) and output width.
    cfg.MOEKD.GATE.STEM_SIZE = [64, 64]
    cfg.MOEKD.GATE.STEM_WIDTH = 128
    # Eval with the "image" gate runs each expert on its group only (False: both on all, same result).
    cfg.MOEKD.GATE.SPARSE_INFERENCE = True

    # Trainable base backbone of the "concat" / "average" rows: fast-reid ResNet depth (Table 5: ResNet-50).
    cfg.MOEKD.BASE_DEPTH = "50x"
    # L_task = L_id + beta L_tri (Eq. 14): beta, the triplet margin alpha (Eq. 15), CE label smoothing (0: plain CE).
    cfg.MOEKD.TRIPLET_WEIGHT = 0.5
    cfg.MOEKD.TRIPLET_MARGIN = 0.3
    cfg.MOEKD.LABEL_SMOOTH = 0.0

    cfg.MOEKD.CACHE = CN()  # teacher-feature cache (plugins/moekd/feature_cache.py)
    # Frozen expert outputs computed once per image (test transforms) and read from disk afterwards.
    cfg.MOEKD.CACHE.ENABLED = True
    # Folder of the cache files; "" = OUTPUT_DIR/expert_cache (the pipeline shares one across its rows).
    cfg.MOEKD.CACHE.DIR = ""

    cfg.MOEKD.STUDENT = CN()  # ResNet-18 student (MoEKDStudent), Eq. 10-16
    # fast-reid ResNet depth of the student.
    cfg.MOEKD.STUDENT.DEPTH = "18x"
    # Projection head FC(512 -> PROJ_DIM) + BN + ReLU (= FEAT_DIM to match the teacher).
    cfg.MOEKD.STUDENT.PROJ_DIM = 2048
    # lambda_1..lambda_4 of Eq. 13: KD, feature MSE, attention transfer, relational (Gram).
    cfg.MOEKD.STUDENT.KD_WEIGHT = 0.5
    cfg.MOEKD.STUDENT.FEAT_WEIGHT = 0.3
    cfg.MOEKD.STUDENT.ATT_WEIGHT = 0.1
    cfg.MOEKD.STUDENT.REL_WEIGHT = 0.1
    # F_s / F_t of L_feat (Eq. 10, "the penultimate layer"): "neck" = each model's classifier input (its BNNeck
    # output; the teacher's with running statistics): same scale, both signed; "embedding" = the student's
    # FC + BN + ReLU output against the teacher feature as they are (scale ~10x apart on the demo, ReLU >= 0 vs
    # signed: the loss is then a scale offset the student cannot remove in a short run; README "student ablation").
    cfg.MOEKD.STUDENT.FEAT_LAYER = "neck"
    # T of Eq. 16.
    cfg.MOEKD.STUDENT.KD_TEMPERATURE = 4.0
    # The trained teacher (a MoEKDTeacher checkpoint, e.g. OUTPUT_DIR/moe/model_final.pth; the pipeline sets it).
    cfg.MOEKD.STUDENT.TEACHER_WEIGHTS = ""
    return cfg
