"""Registries that fast-reid lacks. Components register by class/function name; names must be unique.

TRAINER_REGISTRY
    Trainer classes selected by ``PLUGINS.TRAINER``. Contract: constructed as ``cls(cfg)``, then
    ``resume_or_load(resume=...)`` and ``train()`` (``tools/train_net.py``), with the classmethods
    ``build_model(cfg)`` and ``test(cfg, model)`` usable without an instance (``--eval-only`` calls them).
    Either a subclass of ``fastreid.engine.DefaultTrainer``, or a pipeline that runs several such trainers in
    sequence (e.g. ``SAGEPipeline``).
"""
from fastreid.utils.registry import Registry

TRAINER_REGISTRY = Registry("TRAINER")
TRAINER_REGISTRY.__doc__ = __doc__
