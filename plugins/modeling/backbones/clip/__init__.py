"""The project's one CLIP, from open_clip: both towers, the tokenizer, prompt input, local weights, the tiny CLIP
pre-trained on the procedural data, CLIP-ReID's identity prompts. Importing this package registers ``build_clip_backbone``."""
from .build import build_clip_backbone, clip_from_cfg, clip_width, image_encoder_from_cfg  # noqa: F401  (BACKBONE_REGISTRY)
from .image_encoder import CLIPImageEncoder, CLIPImageFeatures
from .model import build_clip_model, clip_model_config
from .prompt_learner import IdentityPromptLearner
from .text_encoder import CLIPTextEncoder
from .tokenizer import CONTEXT_LENGTH, EOT_ID, SOT_ID, placeholder_positions, tokenize
from .weights import load_clip_weights, read_state_dict, resize_positional_embedding

__all__ = ["CLIPImageEncoder", "CLIPImageFeatures", "CLIPTextEncoder", "IdentityPromptLearner", "build_clip_model", "clip_model_config",
           "build_clip_backbone", "clip_from_cfg", "clip_width", "image_encoder_from_cfg", "tokenize", "placeholder_positions",
           "SOT_ID", "EOT_ID", "CONTEXT_LENGTH", "load_clip_weights", "read_state_dict",
           "resize_positional_embedding"]
