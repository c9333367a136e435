"""Fixtures of the DM-Adapter tests."""
import pytest

from dmadapter_models import DEEP_TOY, tiny_model


@pytest.fixture
def deep_toy_model(monkeypatch):
    """A DMAdapter on DEEP_TOY (12 + 12 blocks), 64x32 input."""
    import plugins.modeling.backbones.clip.build as build

    monkeypatch.setattr(build, "_model_spec", lambda name: DEEP_TOY)
    return tiny_model()
