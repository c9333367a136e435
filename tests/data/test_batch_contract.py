"""``validate_batch``: a batch of every contract key passes; each kind of breach raises naming its key."""
import pytest
import torch

from plugins.data import batch as B
from plugins.data.datasets.attribute_base import UNKNOWN


def good_batch(b: int = 3) -> dict:
    return {
        B.IMAGES: torch.rand(b, 3, 8, 4) * 255,
        B.TARGETS: torch.arange(b),
        B.CAMIDS: torch.zeros(b, dtype=torch.int64),
        B.IMG_PATHS: [f"{i}.jpg" for i in range(b)],
        B.MODALITIES: {"RGB": torch.rand(b, 3, 8, 4) * 255, "NI": torch.rand(b, 3, 8, 4) * 255},
        B.TEXT_TOKENS: torch.zeros(b, B.TEXT_CONTEXT_LENGTH, dtype=torch.int64),
        B.ATTRIBUTES: torch.tensor([[0, 1], [B.MISSING_ATTRIBUTE, 2], [1, B.MISSING_ATTRIBUTE]][:b]),
    }


def test_constants():
    assert B.BASE_KEYS == ("images", "targets", "camids", "img_paths")
    assert B.EXTRA_KEYS == ("modalities", "text_tokens", "attributes")
    assert B.MISSING_ATTRIBUTE == UNKNOWN == -1  # the readers' missing code is the batch's


def test_valid_batches_pass():
    B.validate_batch(good_batch())
    plain = {k: v for k, v in good_batch().items() if k in B.BASE_KEYS}
    plain[B.CAMIDS] = ["market_0", "market_1", "market_0"]  # fast-reid train camids kept as strings
    B.validate_batch(plain)
    B.validate_batch({B.IMAGES: torch.zeros(2, 3, 4, 4)}, required=(B.IMAGES,))


@pytest.mark.parametrize("key,change,needle", [
    ("targets", None, "batch['targets']: missing"),
    ("targets", torch.zeros(3, dtype=torch.int32), "batch['targets']"),
    ("targets", torch.zeros(2, dtype=torch.int64), "batch['targets']"),
    ("images", torch.rand(3, 1, 8, 4), "batch['images']"),
    ("images", torch.randn(3, 3, 8, 4), "batch['images']: values span"),  # normalised already
    ("images", torch.zeros(3, 3, 8, 4, dtype=torch.uint8), "batch['images']"),
    ("camids", [1, 2, 3], "batch['camids']"),
    ("img_paths", ["a.jpg", "b.jpg"], "batch['img_paths']"),
    ("modalities", {"RGB": torch.rand(3, 3, 8, 4), "NI": torch.rand(2, 3, 8, 4)}, "batch['modalities']['NI']"),
    ("modalities", {}, "batch['modalities']"),
    ("text_tokens", torch.zeros(3, 77, dtype=torch.int32), "batch['text_tokens']"),
    ("text_tokens", torch.zeros(3, dtype=torch.int64), "batch['text_tokens']"),
    ("text_tokens", -torch.ones(3, 77, dtype=torch.int64), "batch['text_tokens']: holds negative"),
    ("attributes", torch.full((3, 2), -2), "batch['attributes']"),
    ("attributes", torch.zeros(4, 2, dtype=torch.int64), "batch['attributes']"),
])
def test_breaches_name_the_key(key, change, needle):
    batch = good_batch()
    if change is None:
        del batch[key]
    else:
        batch[key] = change
    with pytest.raises(B.BatchContractError) as err:
        B.validate_batch(batch)
    assert needle in str(err.value)


def test_not_a_dict():
    with pytest.raises(B.BatchContractError, match="dict"):
        B.validate_batch([torch.zeros(1, 3, 2, 2)])
