"""LoRAHub: 1/K coefficients reproduce LoRA-Avg, folding is exact, both optimisers lower a pseudo-label loss."""
import pytest
import torch
from torch import nn

from plugins.tuners.lorahub import (
    LoraHubLinear,
    attach_lorahub,
    fit_lorahub_cma,
    fit_lorahub_gradient,
    fold_lorahub,
)
from plugins.tuners.merge_basic import lora_average, lora_delta

K, R = 3, 2


def _model_and_experts(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 4))
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=g)
    experts = {
        name: [(torch.randn(R, d_in, generator=g), torch.randn(d_out, R, generator=g), 0.5 * (k + 1)) for k in range(K)]
        for name, d_in, d_out in [("0", 6, 8), ("2", 8, 4)]
    }
    return model, experts


def test_uniform_coefficients_equal_lora_average():
    model, experts = _model_and_experts()
    reference = nn.Sequential(*[m for m in model])  # same modules, before wrapping
    x = torch.randn(5, 6)
    with torch.no_grad():
        w0 = model[0].weight + lora_average([lora_delta(A, B, s) for A, B, s in experts["0"]])
        w2 = model[2].weight + lora_average([lora_delta(A, B, s) for A, B, s in experts["2"]])
        h = torch.nn.functional.gelu(x @ w0.T + model[0].bias)
        expected = h @ w2.T + model[2].bias
    del reference
    coeffs = attach_lorahub(model, experts)
    assert isinstance(model[0], LoraHubLinear) and model[0].coefficients is model[2].coefficients is coeffs
    torch.testing.assert_close(coeffs.weight.detach(), torch.full((K,), 1 / K))
    torch.testing.assert_close(model(x), expected)
    # folding into plain Linear layers gives the same function
    fold_lorahub(model)
    assert type(model[0]) is nn.Linear
    torch.testing.assert_close(model(x), expected)


def test_factor_composition_matches_original_lorahub_rule():
    model, experts = _model_and_experts(1)
    same_scale = {n: [(A, B, 2.0) for A, B, _ in f] for n, f in experts.items()}
    coeffs = attach_lorahub(model, same_scale, composition="factors")
    with torch.no_grad():
        coeffs.weight.copy_(torch.tensor([0.5, -1.0, 0.25]))
    c = coeffs.weight.detach()
    A = sum(c[k] * same_scale["0"][k][0] for k in range(K))
    B = sum(c[k] * same_scale["0"][k][1] for k in range(K))
    torch.testing.assert_close(model[0].delta_weight().detach(), 2.0 * B @ A)
    x = torch.randn(3, 6)
    torch.testing.assert_close(model[0](x), x @ (model[0].base.weight + 2.0 * B @ A).T + model[0].base.bias)


def _teacher_task(seed=0):
    """Targets from the same wrapped model with hidden coefficients c*; the fit must lower the loss."""
    model, experts = _model_and_experts(seed)
    coeffs = attach_lorahub(model, experts)
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(seed + 7))
    with torch.no_grad():
        coeffs.weight.copy_(torch.tensor([0.9, -0.4, 0.6]))
        target = model(x)
        coeffs.weight.fill_(1 / K)
    return model, coeffs, lambda: torch.nn.functional.mse_loss(model(x), target)


def test_gradient_fit_lowers_loss_and_trains_only_coefficients():
    torch.manual_seed(0)
    model, coeffs, loss_fn = _teacher_task()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["0.coefficients.weight"]  # shared parameter listed once; base weights frozen
    history = fit_lorahub_gradient(coeffs, loss_fn, steps=60, lr=0.1, l1=0.0)
    assert history[-1] < 0.05 * history[0]
    torch.testing.assert_close(coeffs.weight.detach(), torch.tensor([0.9, -0.4, 0.6]), atol=0.05, rtol=0)


def test_cma_fit_lowers_loss_within_bounds():
    model, coeffs, loss_fn = _teacher_task(1)
    with torch.no_grad():
        start = float(loss_fn()) + 0.05 * coeffs.weight.abs().mean().item()
    best = fit_lorahub_cma(coeffs, loss_fn, budget=120, seed=3)
    assert best < 0.2 * start
    with torch.no_grad():
        assert abs(float(loss_fn()) + 0.05 * coeffs.weight.abs().mean().item() - best) < 1e-5
    assert coeffs.weight.abs().max() <= 1.5


def test_errors_are_explicit():
    model, experts = _model_and_experts()
    with pytest.raises(KeyError, match="no module 'head'"):
        attach_lorahub(model, {"head": experts["0"]})
    with pytest.raises(TypeError, match="nn.Linear only"):
        attach_lorahub(model, {"1": experts["0"]})
    with pytest.raises(ValueError, match="do not fit"):
        attach_lorahub(model, {"0": experts["2"]})
    with pytest.raises(ValueError, match="same number of experts"):
        attach_lorahub(model, {"0": experts["0"], "2": experts["2"][:2]})
    with pytest.raises(ValueError, match="equal rank and scaling"):
        attach_lorahub(model, experts, composition="factors")
