"""Generic, config-free layers (no method-specific code)."""
