"""``add_data_config(cfg)``: the ``PLUGINS.DATA`` keys read by ``plugins.data.mapper.build_extras_dataset``.

The defaults add no key to fast-reid's batches (every extra is off), so existing configs keep their batches.
``build_extras_dataset`` uses these defaults when a config lacks the node.
"""
from fastreid.config import CfgNode as CN

__all__ = ["add_data_config"]


def add_data_config(cfg):
    """Add ``cfg.PLUGINS.DATA`` (creating ``cfg.PLUGINS`` if needed) in place; returns ``cfg``."""
    if "PLUGINS" not in cfg:
        cfg.PLUGINS = CN()
    cfg.PLUGINS.DATA = CN()
    # Names in a reader's extras["modalities"] (e.g. ["RGB", "NI", "TI"]) loaded into batch["modalities"];
    # empty: none loaded.
    cfg.PLUGINS.DATA.MODALITIES = []
    # Training transforms: one random draw shared by an item's image and all its modalities (True), or an
    # independent draw per modality (False). Test transforms are deterministic either way.
    cfg.PLUGINS.DATA.SYNC_MODALITY_TRANSFORMS = True
    # Tokenise each item's caption into batch["text_tokens"] (B, TEXT_CONTEXT_LENGTH) with the project's CLIP
    # tokenizer (plugins.modeling.backbones.clip.tokenizer).
    cfg.PLUGINS.DATA.TEXT = False
    # Token context length L of batch["text_tokens"] (CLIP: 77).
    cfg.PLUGINS.DATA.TEXT_CONTEXT_LENGTH = 77
    # Item with a list of captions in a training loader: "random" (one drawn per access) or "first";
    # test loaders always take the first.
    cfg.PLUGINS.DATA.TRAIN_CAPTION = "random"
    # Put the reader's attribute vectors into batch["attributes"] (missing values = -1).
    cfg.PLUGINS.DATA.ATTRIBUTES = False
    return cfg
