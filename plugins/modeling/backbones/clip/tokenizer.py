"""open_clip's BPE tokenizer (ships its vocabulary, works offline) and prompt-template positions.

Ids: ``<start_of_text>`` = 49406, ``<end_of_text>`` (EOT) = 49407, padding 0; context length 77. The text
feature is read at the EOT token, which is the largest id of a sequence (``argmax``).
"""
from __future__ import annotations

import functools
from typing import List, Sequence, Union

import open_clip
import torch

__all__ = ["SOT_ID", "EOT_ID", "CONTEXT_LENGTH", "get_tokenizer", "tokenize", "placeholder_positions"]

SOT_ID = 49406
EOT_ID = 49407
CONTEXT_LENGTH = 77


@functools.lru_cache(maxsize=None)
def get_tokenizer(context_length: int = CONTEXT_LENGTH):
    """open_clip's ``SimpleTokenizer`` (OpenAI's BPE vocabulary of 49,408 tokens)."""
    return open_clip.get_tokenizer("ViT-B-16", context_length=context_length)


def tokenize(texts: Union[str, Sequence[str]], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """texts -> token ids (N, context_length) long; a longer caption is cut and still ends with EOT."""
    if isinstance(texts, str):
        texts = [texts]
    return get_tokenizer(context_length)(list(texts))


def placeholder_positions(template: str, placeholder: str = "X",
                          context_length: int = CONTEXT_LENGTH) -> List[int]:
    """Token positions of the placeholder words of ``template`` (e.g. the four X of "A photo of a X X X X
    person." -> [5, 6, 7, 8]); fails when the placeholder is not a single token of its own."""
    ids = tokenize(template, context_length)[0]
    ph = tokenize(placeholder, context_length)[0]
    if int((ph > 0).sum()) != 3:
        raise ValueError(f"placeholder {placeholder!r} is not a single BPE token")
    positions = [i for i, t in enumerate(ids.tolist()) if t == int(ph[1])]
    if not positions:
        raise ValueError(f"placeholder {placeholder!r} does not occur in template {template!r}")
    return positions
