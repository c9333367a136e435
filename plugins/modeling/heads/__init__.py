"""ReID heads; importing this package registers them in fast-reid's REID_HEADS_REGISTRY."""
from . import fc_embedding_head  # noqa: F401
