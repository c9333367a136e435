"""Registries that fast-reid lacks. Components register by class/function name; names must be unique.
fast-reid's own registries (BACKBONE, META_ARCH, REID_HEADS, DATASET) keep their host contracts.
``tests/test_contract.py`` builds every entry of every registry from a tiny config: forward + backward, every
trainable parameter gets a gradient, nothing is NaN.
"""
from fastreid.utils.registry import Registry

__all__ = ["TRAINER_REGISTRY", "ROUTER_REGISTRY", "ADAPTER_REGISTRY", "LOSS_REGISTRY"]

TRAINER_REGISTRY = Registry("TRAINER")
TRAINER_REGISTRY.__doc__ = """Trainer classes selected by ``PLUGINS.TRAINER``.

Contract: constructed as ``cls(cfg)``, then ``resume_or_load(resume=...)`` and ``train()``
(``tools/train_net.py``), with the classmethods ``build_model(cfg)`` and ``test(cfg, model)`` usable without an
instance (``--eval-only`` calls them). Either a subclass of ``fastreid.engine.DefaultTrainer``, or a pipeline that
runs several such trainers in sequence, each stage in its own folder (``plugins.engine.stages``).
"""

ROUTER_REGISTRY = Registry("ROUTER")
ROUTER_REGISTRY.__doc__ = """Routers / gates: subclasses of ``plugins.routers.Router``.

Contract: constructed with typed keyword arguments (``num_experts`` among them); ``forward(inputs, **context)``
maps inputs (B, ..., d) to a ``RouterOutput``: ``weights`` (B, ..., K), non-negative (rows of a soft router sum to
1; a sparse router's unselected experts are exactly 0), and ``aux_loss`` (a scalar to add to the training loss,
or None). ``context`` carries what a router may read besides the tokens (e.g. an attribute vector).
"""

ADAPTER_REGISTRY = Registry("ADAPTER")
ADAPTER_REGISTRY.__doc__ = """Experts / adapters that wrap one layer of a frozen base model.

Contract: constructed as ``cls(base_layer, **kwargs)`` (typed keywords: rank, alpha, ...); ``forward`` has the
wrapped layer's signature and output; the base layer's weights are frozen; freshly constructed (zero-initialised
up-projection) the adapter returns exactly the base layer's output; ``merged()`` returns a plain layer of the base
layer's type with the adapter folded in, when the adapter is linear in the weights.
"""

LOSS_REGISTRY = Registry("LOSS")
LOSS_REGISTRY.__doc__ = """Distillation and cross-modal losses (fast-reid's ID / triplet losses are used as they are).

Contract: an ``nn.Module`` constructed with typed keyword arguments; ``forward`` takes tensors named in its
docstring (features (B, D), labels (B,), logits...) and returns a scalar tensor.
"""
