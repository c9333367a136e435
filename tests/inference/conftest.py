"""Fixtures of the inference tests; the tiny models and image writer live in ``inference_models``."""
import pytest

from inference_models import write_images


@pytest.fixture(scope="module")
def gallery_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery")
    write_images(root / "gallery", [(p, c) for p in range(1, 7) for c in (1, 2, 3)], seed=1)
    write_images(root / "query", [(p, 4) for p in range(1, 4)], seed=2)
    return root
