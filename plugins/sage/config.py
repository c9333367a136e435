"""``add_sage_config(cfg)``: the SAGE-reID keys (``cfg.SAGE``), one comment per key naming the paper's symbol.

Dataset roles: ``SAGE.SOURCES`` are the K labelled source datasets (stage 0 only); ``DATASETS.NAMES`` is the
unlabelled target pool (stages 1 and 2) and ``DATASETS.TESTS`` the target evaluation set of every results row.
The rest of the config (model, input, losses, solver) is the stage-0 source recipe; ``SAGE.STAGE<i>_OPTS``
override it per stage with fast-reid's ``KEY VALUE`` list syntax (e.g. ``["SOLVER.MAX_EPOCH", "70"]``).
"""
import logging
import os

from fastreid.config import CfgNode as CN

logger = logging.getLogger("fastreid." + __name__)

from .rows import BASELINES

# SAGE.BASELINES by default: every optional row except the two that need more than the sources and the unlabelled
# target: "blend_vit_lora" (needs SAGE.BLEND's pooled-source model) and "supervised" (needs target labels).
DEFAULT_BASELINES = tuple(b for b in BASELINES if b not in ("blend_vit_lora", "supervised"))


def add_sage_config(cfg):
    """Add the SAGE-reID keys to a fast-reid config, in place; returns ``cfg``."""
    cfg.SAGE = CN()
    # The K labelled source datasets (registered dataset names), one expert each. Order = expert order.
    cfg.SAGE.SOURCES = ()
    # Names of the experts / output folders, one per source; empty: the lower-cased source names.
    cfg.SAGE.SOURCE_TAGS = ()
    # Existing stage-0 source checkpoints (fast-reid .pth or safetensors), one per source; empty: stage 0 trains
    # them. Loaded with weights_only=True.
    cfg.SAGE.SOURCE_WEIGHTS = ()
    # Stage-1 expert folders (peft layout), one per source; filled by the pipeline, or set it to skip stage 1.
    cfg.SAGE.EXPERT_DIRS = ()
    # Optional shared pre-training of the backbone before stage 0 on these datasets (labelled, disjoint from the
    # sources and the target): every source model then starts from it. Real runs start from ImageNet weights
    # (MODEL.BACKBONE.PRETRAIN_PATH) instead; CPU demos without such weights use it, because averaging the source
    # backbones (stage 2) is only meaningful for models fine-tuned from one shared initialisation.
    cfg.SAGE.PRETRAIN_DATASETS = ()
    # Config overrides of that pre-training (fast-reid KEY VALUE list).
    cfg.SAGE.PRETRAIN_OPTS = []
    # Config overrides per stage (fast-reid KEY VALUE list): 0 source training, 1 experts, 2 gate training.
    cfg.SAGE.STAGE0_OPTS = []
    cfg.SAGE.STAGE1_OPTS = []
    cfg.SAGE.STAGE2_OPTS = []

    cfg.SAGE.LORA = CN()
    # r: rank of every expert (paper: 4 for Market/Duke targets, 8 for MSMT17).
    cfg.SAGE.LORA.RANK = 8
    # alpha: the residual is scaled by alpha / r (paper: 16 with r=4, 32 with r=8).
    cfg.SAGE.LORA.ALPHA = 32.0
    # Dropout on the LoRA input (paper: 0.05).
    cfg.SAGE.LORA.DROPOUT = 0.05
    # Also train every ViT bias in stage 1 (the authors' code does; the paper's text does not say so).
    cfg.SAGE.LORA.TRAIN_BIAS = False

    cfg.SAGE.GATE = CN()
    # Gate of the merged model trained in stage 2 (plugins.sage.rows.GATES: kind -> registered router): "sage"
    # (SAGEGate: shared w over N x d_out), "mole" (MoLEGate: per-expert projection, baseline) or "avg" (no router:
    # LoRA-Avg).
    cfg.SAGE.GATE.KIND = "sage"
    # Initial softmax temperature tau of every gated layer.
    cfg.SAGE.GATE.TAU_INIT = 1.0
    # Stage 2 trains the gates (w, tau) AND the target classifier (paper, Sec. 3); False keeps the classifier a
    # frozen prototype classifier as in stage 1 (PLUGINS.PSEUDO_LABEL.CLASSIFIER_FROZEN applies to stage 1 only).
    cfg.SAGE.GATE.TRAIN_CLASSIFIER = True
    # eps of the token-row L2 normalisation of the residuals (Omega).
    cfg.SAGE.GATE.EPS = 1e-6

    # Results rows besides source-only / single experts / SAGE: any subset of plugins.sage.rows.BASELINES
    # (Table 2: "avg_vit" Avg + ViT, "avg_vit_lora" Avg + ViT (LoRA), "blend_vit_lora" Blend + ViT (LoRA), needs
    # SAGE.BLEND; Table 5: "lora_avg", "task_arithmetic", "ties", "dare", "knots_ta", "knots_ties", "tsv_merge",
    # "lorahub", "mole"; Table 1's upper bound "supervised": ViT trained on the target's own labels, needs a labelled
    # target train set). Order does not matter: the table follows plugins.sage.rows.ROWS.
    cfg.SAGE.BASELINES = DEFAULT_BASELINES
    # "Blend + ViT" row: one stage-0 model trained on the pooled sources (Table 2).
    cfg.SAGE.BLEND = False
    # Leave-one-source-out rows: SAGE with K-1 experts, one row per left-out source (K extra gate trainings).
    cfg.SAGE.LEAVE_ONE_OUT = False

    # After the results table: gate weights per expert and module, their correlation, and expert-vs-merged CKA of
    # the SAGE model over the target query set (tables + heatmaps in OUTPUT_DIR/analysis; tools/analyze_sage.py).
    cfg.SAGE.ANALYZE = True
    # Query images the analysis uses (0: all).
    cfg.SAGE.ANALYSIS_MAX_IMAGES = 0

    cfg.SAGE.MERGE = CN()
    # lambda of Task Arithmetic / TIES / DARE / KnOTS / TSV-M (merged delta = lambda * combined deltas).
    cfg.SAGE.MERGE.SCALE = 1.0
    # TIES: fraction of each expert's delta entries kept by magnitude.
    cfg.SAGE.MERGE.DENSITY = 0.2
    # Where TIES ranks magnitudes for its trim: "layer" (per layer, as peft; the default) or "model" (over all
    # layers of an expert, as the TIES paper).
    cfg.SAGE.MERGE.TRIM_SCOPE = "layer"
    # DARE: drop rate p of the random mask (kept entries rescaled by 1 / (1 - p)).
    cfg.SAGE.MERGE.DROP_RATE = 0.5
    # KnOTS' combination of the aligned coefficients is the row's: "knots_ta" Task Arithmetic, "knots_ties" TIES
    # (per layer, DENSITY) -- the paper's KnOTS-TA / KnOTS-TIES (Table 5).
    # KnOTS trim size per task: "authors" keeps int(DENSITY * n) + 1 coefficients (the KnOTS code's rule),
    # "peft" int(DENSITY * n) (TIES as peft trims it).
    cfg.SAGE.MERGE.KNOTS_KEEP = "authors"
    # Seed of DARE's masks.
    cfg.SAGE.MERGE.SEED = 0
    # Re-estimate the BNNeck statistics of every training-free merge (static merges, LoRAHub) on the unlabelled
    # target images, as gate training does for SAGE / MoLE (plugins/sage/bn_recalibration.py).
    cfg.SAGE.MERGE.RECALIBRATE_BN = True

    cfg.SAGE.LORAHUB = CN()
    # Optimiser of the K layer-shared coefficients: "cma" (gradient-free, as the paper) or "gradient" (Adam).
    cfg.SAGE.LORAHUB.OPTIMIZER = "cma"
    # Objective evaluations (cma) or steps (gradient).
    cfg.SAGE.LORAHUB.BUDGET = 40
    # Pseudo-labelled target images in the fixed objective batch (an equal number per cluster, at most).
    cfg.SAGE.LORAHUB.NUM_IMAGES = 256
    # Softmax temperature of the cosine logits against the cluster centroids in the objective.
    cfg.SAGE.LORAHUB.TEMPERATURE = 0.05
    # L1 penalty weight on mean |c| (paper: 0.05).
    cfg.SAGE.LORAHUB.L1 = 0.05
    return cfg


def source_tags(cfg) -> tuple[list, list]:
    """(``SAGE.SOURCES``, their tags) after checking the per-source keys: at least 2 sources, one distinct tag per
    source (``SAGE.SOURCE_TAGS`` or the lower-cased names), and ``SAGE.SOURCE_WEIGHTS`` / ``SAGE.EXPERT_DIRS``
    empty or one entry per source."""
    s = cfg.SAGE
    sources = list(s.SOURCES)
    if len(sources) < 2:
        raise ValueError(f"SAGE.SOURCES needs at least 2 source datasets, got {sources}")
    tags = list(s.SOURCE_TAGS) or [n.lower() for n in sources]
    if len(tags) != len(sources) or len(set(tags)) != len(tags):
        raise ValueError(f"SAGE.SOURCE_TAGS {tags} must give one distinct name per source {sources}")
    for key in ("SOURCE_WEIGHTS", "EXPERT_DIRS"):
        given = list(s.get(key))
        if given and len(given) != len(sources):
            raise ValueError(f"SAGE.{key} has {len(given)} entries for {len(sources)} SAGE.SOURCES")
        seen = {}
        for k, path in enumerate(given):
            first = seen.setdefault(os.path.realpath(path), k)
            if first != k:
                logger.warning(f"SAGE.{key}[{k}] and [{first}] are the same file/folder {path!r}: sources "
                               f"{sources[first]} and {sources[k]} would share one {key.lower()[:-1]}")
    return sources, tags


def eval_model_cfg(cfg):
    """The config that evaluation-only models (merges, given sources/experts, a trained stage-2 checkpoint) are
    rebuilt with: the run's config + ``SAGE.STAGE2_OPTS``, one placeholder class (no classifier is used), every
    weight from the run's files (no ImageNet weights, no ``MODEL.WEIGHTS``)."""
    c = cfg.clone()
    c.defrost()
    c.merge_from_list(list(cfg.SAGE.STAGE2_OPTS))
    c.MODEL.HEADS.NUM_CLASSES = 1
    c.MODEL.BACKBONE.PRETRAIN = False
    c.MODEL.WEIGHTS = ""
    c.freeze()
    return c
