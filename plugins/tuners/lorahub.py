"""LoRAHub (Huang et al., COLM 2024): K static expert coefficients, shared by every layer, learned on (pseudo-)labels.

A wrapped linear layer computes ``y = x W^T + b + sum_k c_k s_k (x A_k^T) B_k^T``: the merged weight is
``W + sum_k c_k s_k B_k A_k`` (``composition="output"``, the form in which c_k = 1/K is exactly LoRA-Avg).
The original LoRAHub code instead mixes the factors, ``(sum_k c_k B_k)(sum_k c_k A_k)`` (cross terms included);
that is ``composition="factors"`` (needs equal ranks and scalings).

Two optimisers for the K coefficients:
- :func:`fit_lorahub_gradient`: gradient descent through the merged forward (Adam); differentiable, cheap
  because only K scalars are trained. A documented deviation from the paper.
- :func:`fit_lorahub_cma`: gradient-free CMA-ES as in the paper (the original used nevergrad's NGOpt
  portfolio; ``cma`` (pycma) is the maintained reference CMA-ES implementation), with the paper's box bounds
  [-1.5, 1.5] and L1 penalty ``0.05 * mean|c|``.
"""
from __future__ import annotations

from typing import Callable, Literal, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from ..layers.low_rank import LinearWrapper, LoRAFactors, StackedLoRA, fold_delta, stack_factors
from .targets import replace_module

__all__ = [
    "LoraHubCoefficients",
    "LoraHubLinear",
    "attach_lorahub",
    "fold_lorahub",
    "fit_lorahub_gradient",
    "fit_lorahub_cma",
]

class LoraHubCoefficients(nn.Module):
    """The K layer-shared coefficients c (init 1/K, i.e. LoRA-Avg)."""

    def __init__(self, *, num_experts: int, init: Optional[float] = None):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"LoRAHub needs at least one expert, got {num_experts}")
        value = 1.0 / num_experts if init is None else float(init)
        self.weight = nn.Parameter(torch.full((num_experts,), value))

    def forward(self) -> Tensor:
        """(K,) coefficients."""
        return self.weight


class LoraHubLinear(LinearWrapper):
    """A frozen ``nn.Linear`` plus K frozen LoRA experts mixed by shared coefficients.

    The experts are held stacked (``lora_A`` (K, r, d_in), ``lora_B`` (K, d_out, r), ``scaling`` (K,) buffers;
    experts of lower rank zero-padded, which changes nothing) and computed by ``plugins.layers.low_rank``.
    """

    def __init__(
        self,
        *,
        base: nn.Linear,
        experts: Sequence[LoRAFactors],
        coefficients: LoraHubCoefficients,
        composition: Literal["output", "factors"] = "output",
    ):
        super().__init__()
        if len(experts) != coefficients.weight.numel():
            raise ValueError(f"{len(experts)} experts for {coefficients.weight.numel()} LoRAHub coefficients")
        if composition not in ("output", "factors"):
            raise ValueError(f"unknown LoRAHub composition {composition!r}; expected 'output' or 'factors'")
        stacked = stack_factors([A for A, _, _ in experts], [B for _, B, _ in experts], [s for _, _, s in experts],
                                in_features=base.in_features, out_features=base.out_features, like=base.weight,
                                pad_ranks=True)
        if composition == "factors" and (
            len({A.shape[0] for A, _, _ in experts}) > 1 or len({s for _, _, s in experts}) > 1
        ):
            raise ValueError("composition='factors' needs experts of equal rank and scaling")
        self.base = base.requires_grad_(False)
        self.coefficients = coefficients  # the same module object in every wrapped layer
        self.composition = composition
        self.register_buffer("lora_A", stacked.A)
        self.register_buffer("lora_B", stacked.B)
        self.register_buffer("scaling", stacked.scaling)

    def factors(self) -> StackedLoRA:
        """The update as stacked factors: the K experts (``"output"``), or for ``"factors"`` the one expert
        ``(sum_k c_k B_k, sum_k c_k A_k, s)`` of the original LoRAHub code."""
        if self.composition == "factors":
            c = self.coefficients().to(self.lora_A.dtype)
            return StackedLoRA.single(torch.einsum("k,krd->rd", c, self.lora_A),
                                      torch.einsum("k,kor->or", c, self.lora_B), self.scaling[:1])
        return StackedLoRA(self.lora_A, self.lora_B, self.scaling)

    def _weights(self) -> Optional[Tensor]:
        return None if self.composition == "factors" else self.coefficients()

    def forward(self, x: Tensor) -> Tensor:
        """x (..., d_in) -> (..., d_out)."""
        return self.base(x) + self.factors().residual(x, self._weights())

    def delta_weight(self) -> Tensor:
        """(d_out, d_in) merged update for the current coefficients."""
        return self.factors().delta(self._weights())

    @torch.no_grad()
    def merged_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with weight ``W + delta_weight()`` (for inference at no extra cost)."""
        return fold_delta(self.base, self.delta_weight())


def attach_lorahub(
    model: nn.Module,
    experts: Mapping[str, Sequence[LoRAFactors]],
    *,
    composition: Literal["output", "factors"] = "output",
    init: Optional[float] = None,
) -> LoraHubCoefficients:
    """Replace each named ``nn.Linear`` of ``model`` by a :class:`LoraHubLinear` (in place).

    Args:
        experts: module name -> the K experts' factors for that layer (same K everywhere).
    Returns:
        The coefficient module shared by all wrapped layers (its ``weight`` is what LoRAHub trains).
    """
    if not experts:
        raise ValueError("attach_lorahub needs at least one layer")
    counts = {name: len(f) for name, f in experts.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"every layer needs the same number of experts, got {counts}")
    coefficients = LoraHubCoefficients(num_experts=next(iter(counts.values())), init=init)
    for name, factors in experts.items():
        try:
            base = model.get_submodule(name)
        except AttributeError as err:
            raise KeyError(f"model has no module {name!r}") from err
        if not isinstance(base, nn.Linear):
            raise TypeError(f"module {name!r} is {type(base).__name__}, LoRAHub wraps nn.Linear only")
        coefficients = coefficients.to(base.weight.device)
        replace_module(
            model, name, LoraHubLinear(base=base, experts=factors, coefficients=coefficients, composition=composition)
        )
    return coefficients


def fold_lorahub(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoraHubLinear` in ``model`` by its merged ``nn.Linear`` (in place); returns model."""
    names = [n for n, m in model.named_modules() if isinstance(m, LoraHubLinear)]
    for name in names:
        replace_module(model, name, model.get_submodule(name).merged_linear())
    return model


def l1_penalty(c: Tensor, weight: float) -> Tensor:
    """LoRAHub's regulariser: ``weight * mean_k |c_k|``."""
    return weight * c.abs().mean()


def fit_lorahub_gradient(
    coefficients: LoraHubCoefficients,
    loss_fn: Callable[[], Tensor],
    *,
    steps: int,
    lr: float = 0.05,
    l1: float = 0.05,
    bounds: tuple[float, float] = (-1.5, 1.5),
) -> list[float]:
    """Adam on the K coefficients; ``loss_fn()`` runs the wrapped model on a (pseudo-)labelled batch and returns
    a differentiable scalar. After each step the coefficients are clipped to ``bounds``.

    Returns:
        The objective (loss + L1 penalty) before each step.
    """
    opt = torch.optim.Adam(coefficients.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        opt.zero_grad()
        objective = loss_fn() + l1_penalty(coefficients.weight, l1)
        objective.backward()
        opt.step()
        with torch.no_grad():
            coefficients.weight.clamp_(*bounds)
        history.append(float(objective.detach()))
    return history


@torch.no_grad()
def fit_lorahub_cma(
    coefficients: LoraHubCoefficients,
    loss_fn: Callable[[], Tensor | float],
    *,
    budget: int,
    sigma0: float = 0.3,
    l1: float = 0.05,
    bounds: tuple[float, float] = (-1.5, 1.5),
    seed: int = 1,
) -> float:
    """Gradient-free CMA-ES (pycma) over the K coefficients, starting from their current value; at most ``budget``
    evaluations of ``loss_fn() + l1 * mean|c|``. Leaves the best coefficients found in ``coefficients``.

    Returns:
        The best objective value.
    """
    try:
        import cma
    except ImportError as err:
        raise ImportError("fit_lorahub_cma needs the 'cma' package (pip install cma)") from err
    weight = coefficients.weight
    # pycma refuses 1-D problems; LoRAHub with a single expert has nothing to weigh anyway
    if weight.numel() < 2:
        raise ValueError("CMA-ES needs at least 2 coefficients (experts)")

    def objective(x) -> float:
        weight.copy_(torch.as_tensor(x, dtype=weight.dtype, device=weight.device))
        return float(loss_fn()) + float(l1_penalty(weight, l1))

    x0 = weight.detach().cpu().double().numpy()
    start = objective(x0)
    es = cma.CMAEvolutionStrategy(
        x0, sigma0, {"bounds": [bounds[0], bounds[1]], "maxfevals": budget, "seed": seed, "verbose": -9}
    )
    while not es.stop():
        xs = es.ask()
        es.tell(xs, [objective(x) for x in xs])
    best_x, best_f = (es.result.xbest, es.result.fbest) if es.result.fbest < start else (x0, start)
    weight.copy_(torch.as_tensor(best_x, dtype=weight.dtype, device=weight.device))
    return float(best_f)
