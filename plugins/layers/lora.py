"""A plain LoRA linear layer: frozen ``nn.Linear`` plus a trainable low-rank residual (Hu et al., 2021).

peft's ``lora.Linear`` is what ``plugins.tuners.inject.inject_lora`` puts into models whose adapters are saved
(adapter files stay peft's format). This cfg-free layer is what ``inject_adapters`` puts on linear targets of any
backbone family (beside ``LoRAMultiheadAttention`` on attention targets): it holds exactly one ``(A, B)`` pair
with peft's parameter names (``lora_A.weight``, ``lora_B.weight``) and peft's initialisation, so factors move
between the two without renaming. The residual itself is computed by ``plugins.layers.low_rank`` (K = 1).
"""
from typing import Optional

import torch
from torch import nn

from ..registry import ADAPTER_REGISTRY
from .low_rank import LinearWrapper, StackedLoRA, fold_delta, init_lora_, lora_residual

__all__ = ["LoRALinear", "lora_residual"]  # lora_residual lives in low_rank; importable here too


@ADAPTER_REGISTRY.register()
class LoRALinear(LinearWrapper):
    """``y = x W^T + b + s * dropout(x) A^T B^T`` with ``W, b`` frozen and ``s = alpha / r``.

    Shapes: ``x`` (..., d_in) -> (..., d_out); ``A = lora_A.weight`` (r, d_in); ``B = lora_B.weight`` (d_out, r).
    """

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float, dropout: float = 0.0,
                 train_bias: bool = False):
        """
        Args:
            base: the pretrained linear layer; its weight is frozen (and its bias unless ``train_bias``).
            rank: r, the rank of the residual (> 0).
            alpha: LoRA alpha; the residual is scaled by ``alpha / rank``.
            dropout: dropout probability on the input of the low-rank branch only.
            train_bias: keep the base bias trainable (the SAGE authors' code trains biases).
        """
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear, got {type(base).__name__}")
        if rank <= 0:
            raise ValueError(f"LoRA rank must be > 0, got {rank}")
        self.base = base
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(train_bias)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}  # the factors follow the base layer
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, **factory)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, **factory)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_lora_parameters()

    # Host code reads ``.weight`` / ``.bias`` of the module it holds (open_clip's text tower takes its cast dtype
    # from ``resblocks[0].mlp.c_fc.weight``), as with peft's layers: they answer with the frozen base's tensors.
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.base.bias

    def reset_lora_parameters(self) -> None:
        """peft's default: A ~ kaiming-uniform(a=sqrt(5)), B = 0, so the wrapped layer starts equal to the base."""
        init_lora_(self.lora_A.weight, self.lora_B.weight)

    def factors(self) -> StackedLoRA:
        """The adapter as a one-expert :class:`StackedLoRA` view (no copy; gradients reach A and B)."""
        return StackedLoRA.single(self.lora_A.weight, self.lora_B.weight, self.scaling)

    def delta_weight(self) -> torch.Tensor:
        """The dense update ``s * B A`` (d_out, d_in) that merging adds to ``W``."""
        return self.factors().delta()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_in) -> (..., d_out)."""
        return self.base(x) + self.factors().residual(self.lora_dropout(x))

    def merged(self) -> nn.Linear:
        """A copy of the base ``nn.Linear`` with ``W + s B A`` (inference without the extra branch), in the base's
        dtype and device, with the base's ``requires_grad``."""
        return fold_delta(self.base, self.delta_weight())

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"

