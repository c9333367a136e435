"""SAGE-reID: source-free multi-source domain adaptation by gated merging of LoRA experts (see README.md)."""
from .convert import build_gated_vit, build_gated_vit_from_bank, convert_peft_vit, gate_factory  # noqa: F401
from .gate import SAGEGate  # noqa: F401
from .mole_gate import MoLEGate  # noqa: F401
