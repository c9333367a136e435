"""Config keys of the shared model components (called from ``plugins.config.add_plugins_config``)."""
from fastreid.config import CfgNode as CN


def add_vit_backbone_config(cfg):
    """Keys of ``build_timm_vit_backbone``; it also reads the host's PRETRAIN, PRETRAIN_PATH (local weights file:
    safetensors or torch), DROP_PATH_RATIO, DROP_RATIO, ATT_DROP_RATE and SIE_COE."""
    cfg.MODEL.BACKBONE.TIMM_VIT = CN()
    # timm model name (ViT-B/16: vit_base_patch16_224; set FEAT_DIM to its width, 768).
    cfg.MODEL.BACKBONE.TIMM_VIT.NAME = "vit_base_patch16_224"
    # Input (H, W); must equal INPUT.SIZE_TRAIN/SIZE_TEST. 256x128 with patch 16 -> 129 tokens.
    cfg.MODEL.BACKBONE.TIMM_VIT.IMG_SIZE = [256, 128]
    # With PRETRAIN on and PRETRAIN_PATH empty: download timm's weights (needs internet). Off: a local file.
    cfg.MODEL.BACKBONE.TIMM_VIT.HUB_PRETRAINED = False
    # SIE camera embedding (TransReID): number of camera ids; 0 = off. Needs META_ARCHITECTURE CameraAwareBaseline.
    cfg.MODEL.BACKBONE.TIMM_VIT.NUM_CAMERAS = 0
    # Shape overrides of the named timm model (0 = keep): patch size, width, number of blocks, attention heads.
    # For small CPU runs (e.g. the SAGE demo); real experiments keep the named model and its pretrained weights.
    cfg.MODEL.BACKBONE.TIMM_VIT.PATCH_SIZE = 0
    cfg.MODEL.BACKBONE.TIMM_VIT.EMBED_DIM = 0
    cfg.MODEL.BACKBONE.TIMM_VIT.DEPTH = 0
    cfg.MODEL.BACKBONE.TIMM_VIT.NUM_HEADS = 0
    return cfg


def add_clip_backbone_config(cfg):
    """Keys of the CLIP towers (``plugins.modeling.backbones.clip.build``); the image tower also reads the host's
    ``PRETRAIN`` (load ``WEIGHTS``; off = random init) and ``SIE_COE`` (coefficient of the camera embedding)."""
    cfg.MODEL.BACKBONE.CLIP = CN()
    # open_clip model name (ViT-B-16 for CLIP-ReID / DM-Adapter / DeMo), or "tiny" for the small CLIP pre-trained
    # on the procedural data (plugins/modeling/backbones/clip/tiny.py).
    cfg.MODEL.BACKBONE.CLIP.NAME = "ViT-B-16"
    # QuickGELU (x * sigmoid(1.702 x)) as OpenAI's released weights; nn.GELU otherwise.
    cfg.MODEL.BACKBONE.CLIP.QUICK_GELU = True
    # Weights: "" random init; a local file (OpenAI TorchScript .pt, open_clip checkpoint, state dict or
    # .safetensors); "openai" downloads OpenAI's release through open_clip (needs internet, never tried
    # otherwise); "procedural" the tiny CLIP's cached pre-training (NAME "tiny"; trained on first use).
    # The image tower's positional embedding is resized bilinearly to INPUT.SIZE_TRAIN.
    cfg.MODEL.BACKBONE.CLIP.WEIGHTS = ""
    # SIE (camera / view embedding on the CLS token): number of camera ids / view ids; 0 = off.
    cfg.MODEL.BACKBONE.CLIP.NUM_CAMERAS = 0
    cfg.MODEL.BACKBONE.CLIP.NUM_VIEWS = 0
    # Output of build_clip_backbone (fast-reid Baseline heads): "cls" (after ln_post), "proj" (CLIP embedding)
    # or "cls+proj" (concatenated). FEAT_DIM must equal its width.
    cfg.MODEL.BACKBONE.CLIP.FEATURE = "cls"
    return cfg


def add_clipreid_model_config(cfg):
    """Keys of the CLIP-ReID model (``CLIPReID``) and its two trainers (``plugins.engine.clipreid_trainers``),
    shared by the CLIP-ReID and MoSAIC-ReID methods; one comment per key, the official code's key in brackets."""
    if "CLIPREID" not in cfg:  # the CLIP-ReID method's adder may have created it
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
    # Solver overrides of stage 2 in the multi-stage pipelines (KEY VALUE ...; CLIPReIDPipeline, MoSAICPipeline).
    cfg.CLIPREID.STAGE2_OPTS = []
    return cfg
