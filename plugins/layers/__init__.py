"""Generic, config-free layers (no method-specific code); importing this package registers the adapters
(ADAPTER_REGISTRY: ``LoRALinear``, ``LoRAMultiheadAttention``)."""
from . import lora, lora_attention  # noqa: F401
