"""Registries that fast-reid lacks. Components register by class/function name; names must be unique.

TRAINER_REGISTRY
    Trainer classes selected by ``PLUGINS.TRAINER``. Contract: a subclass of
    ``fastreid.engine.DefaultTrainer`` constructed as ``cls(cfg)``, with the classmethods ``build_model(cfg)``
    and ``test(cfg, model)`` usable without an instance (``tools/train_net.py --eval-only`` calls them).
"""
from fastreid.utils.registry import Registry

TRAINER_REGISTRY = Registry("TRAINER")
TRAINER_REGISTRY.__doc__ = __doc__
