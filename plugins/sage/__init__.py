"""SAGE-reID: source-free multi-source domain adaptation by gated merging of LoRA experts (see README.md)."""
# Registration (ROUTER_REGISTRY): the SAGE and MoLE gates.
from .gate import SAGEGate  # noqa: F401
from .mole_gate import MoLEGate  # noqa: F401
from .gated_model import build_gated_vit  # noqa: F401
# Registration (TRAINER_REGISTRY): the stage trainers and the end-to-end pipeline.
from . import pipeline, trainers  # noqa: E402,F401
from .config import add_sage_config  # noqa: E402,F401
