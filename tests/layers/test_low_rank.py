"""The one LoRA residual (plugins.layers.low_rank): a hand-computed example, and every layer built on it equals the
dense formula ``y = x W^T + b + sum_k w_k s_k x A_k^T B_k^T`` (float64, outputs and gradients)."""
import copy

import pytest
import torch
from torch import nn

from plugins.layers.gated_lora import GatedLoRALinear
from plugins.layers.lora import LoRALinear
from plugins.layers.lora_attention import LoRAMultiheadAttention
from plugins.layers.low_rank import StackedLoRA, fold_delta, lora_delta, lora_residual, stack_factors
from plugins.routers.base import RouterOutput
from plugins.tuners.lorahub import LoraHubCoefficients, LoraHubLinear

DT = torch.float64

# Two experts of rank 1 on a 2 -> 2 map: A_1 = [1 2], B_1 = [3 -1]^T, s_1 = 2; A_2 = [0 1], B_2 = [1 1]^T, s_2 = 0.5.
A = [torch.tensor([[1.0, 2.0]], dtype=DT), torch.tensor([[0.0, 1.0]], dtype=DT)]
B = [torch.tensor([[3.0], [-1.0]], dtype=DT), torch.tensor([[1.0], [1.0]], dtype=DT)]
S = [2.0, 0.5]
X = torch.tensor([[1.0, 1.0]], dtype=DT)


def _known() -> StackedLoRA:
    return stack_factors(A, B, S, in_features=2, out_features=2, like=X)


def test_known_answer():
    lora = _known()
    # h_k = s_k A_k x: h_1 = 2 * (1 + 2) = 6, h_2 = 0.5 * 1 = 0.5
    torch.testing.assert_close(lora.down(X), torch.tensor([[[6.0], [0.5]]], dtype=DT), rtol=0, atol=0)
    # Delta_1 = B_1 h_1 = [18, -6], Delta_2 = [0.5, 0.5]; sum [18.5, -5.5]; weights (0.25, 2): [5.5, -0.5]
    torch.testing.assert_close(lora.residual(X), torch.tensor([[18.5, -5.5]], dtype=DT), rtol=0, atol=0)
    w = torch.tensor([0.25, 2.0], dtype=DT)
    torch.testing.assert_close(lora.residual(X, w), torch.tensor([[5.5, -0.5]], dtype=DT), rtol=0, atol=0)
    # s_1 B_1 A_1 = [[6, 12], [-2, -4]], s_2 B_2 A_2 = [[0, .5], [0, .5]]
    torch.testing.assert_close(lora.delta(), torch.tensor([[6.0, 12.5], [-2.0, -3.5]], dtype=DT), rtol=0, atol=0)
    torch.testing.assert_close(lora.delta(w), torch.tensor([[1.5, 4.0], [-0.5, 0.0]], dtype=DT), rtol=0, atol=0)
    torch.testing.assert_close(lora_delta(A[0], B[0], S[0]), torch.tensor([[6.0, 12.0], [-2.0, -4.0]], dtype=DT))
    torch.testing.assert_close(lora_residual(X, A[0], B[0], S[0]), torch.tensor([[18.0, -6.0]], dtype=DT))
    # per-sample weights: two samples of one token, sample 0 takes expert 1 only, sample 1 expert 2 only
    res = lora.residuals(torch.stack([X, X]))  # h (2, 1, 2, 1)
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=DT)
    torch.testing.assert_close(res.combine(g), torch.tensor([[[18.0, -6.0]], [[0.5, 0.5]]], dtype=DT))
    torch.testing.assert_close(res.row_norms(), torch.tensor([[[360.0 ** 0.5], [0.5 ** 0.5]]] * 2, dtype=DT))


def test_rank_padding_is_exact_and_checks():
    a2 = torch.tensor([[1.0, 2.0], [4.0, -1.0]], dtype=DT)  # a rank-2 expert beside the rank-1 one
    b2 = torch.tensor([[3.0, 1.0], [-1.0, 0.0]], dtype=DT)
    padded = stack_factors([A[0], a2], [B[0], b2], [2.0, 1.0], in_features=2, out_features=2, like=X, pad_ranks=True)
    assert padded.A.shape == (2, 2, 2) and padded.B.shape == (2, 2, 2)
    expected = lora_residual(X, A[0], B[0], 2.0) + lora_residual(X, a2, b2, 1.0)
    torch.testing.assert_close(padded.residual(X), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="one rank"):
        stack_factors([A[0], a2], [B[0], b2], [2.0, 1.0], in_features=2, out_features=2, like=X)
    with pytest.raises(ValueError, match="do not fit"):
        stack_factors([A[0]], [B[0]], [1.0], in_features=3, out_features=2, like=X)
    with pytest.raises(ValueError, match="matching"):
        stack_factors(A, B, [1.0], in_features=2, out_features=2, like=X)


def _experts(k, r, d_in, d_out, seed):
    g = torch.Generator().manual_seed(seed)
    a = [torch.randn(r, d_in, generator=g, dtype=DT) for _ in range(k)]
    b = [torch.randn(d_out, r, generator=g, dtype=DT) for _ in range(k)]
    s = [float(v) for v in torch.rand(k, generator=g) + 0.25]
    return a, b, s


def _dense(x, base, a, b, s, w):
    """The dense formula, one expert at a time: x W^T + b + sum_k w_k s_k x (B_k A_k)^T; w (K,) or (B, K)."""
    out = x @ base.weight.T + base.bias
    for k in range(len(a)):
        wk = w[k] if w.dim() == 1 else w[:, k].reshape(-1, *[1] * (x.dim() - 1))
        out = out + wk * s[k] * (x @ (b[k] @ a[k]).T)
    return out


def _base(d_in, d_out, seed):
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out).to(DT)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_stacked_form_equals_dense_formula(k):
    g = torch.Generator().manual_seed(100 + k)
    r, d_in, d_out, n, batch = [int(v) for v in torch.randint(2, 9, (5,), generator=g)]
    a, b, s = _experts(k, r, d_in, d_out, seed=k)
    base = _base(d_in, d_out, k)
    lora = stack_factors(a, b, s, in_features=d_in, out_features=d_out, like=base.weight)
    x = torch.randn(batch, n, d_in, generator=g, dtype=DT)
    w = torch.randn(k, generator=g, dtype=DT)
    per_sample = torch.rand(batch, k, generator=g, dtype=DT)
    torch.testing.assert_close(base(x) + lora.residual(x), _dense(x, base, a, b, s, torch.ones(k, dtype=DT)))
    torch.testing.assert_close(base(x) + lora.residual(x, w), _dense(x, base, a, b, s, w))
    torch.testing.assert_close(base(x) + lora.residual(x, per_sample), _dense(x, base, a, b, s, per_sample))
    torch.testing.assert_close(lora.delta(w), sum(w[i] * s[i] * b[i] @ a[i] for i in range(k)))
    dense = lora.residuals(x).dense()
    torch.testing.assert_close(dense, torch.stack([s[i] * x @ (b[i] @ a[i]).T for i in range(k)], dim=1))


@pytest.mark.parametrize("k", [1, 3, 10])
def test_gated_layer_equals_dense_formula(k):
    """Fixed per-sample gate weights (and no gate: 1/K), outputs and input gradients."""
    g = torch.Generator().manual_seed(k)
    r, d_in, d_out, n, batch = [int(v) for v in torch.randint(2, 9, (5,), generator=g)]
    a, b, s = _experts(k, r, d_in, d_out, seed=10 + k)
    weights = torch.rand(batch, k, generator=g, dtype=DT)

    class Fixed(nn.Module):
        def forward(self, residuals):
            return RouterOutput(weights)

    x = torch.randn(batch, n, d_in, generator=g, dtype=DT)
    for gate, w in ((Fixed(), weights), (None, torch.full((k,), 1.0 / k, dtype=DT))):
        base = _base(d_in, d_out, k)
        layer = GatedLoRALinear(copy.deepcopy(base), lora_A=a, lora_B=b, scaling=s, gate=gate)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y, y_ref = layer(x1), _dense(x2, base, a, b, s, w)
        torch.testing.assert_close(y, y_ref)
        grad, = torch.autograd.grad(y.square().sum(), x1)
        grad_ref, = torch.autograd.grad(y_ref.square().sum(), x2)
        torch.testing.assert_close(grad, grad_ref)


def test_gated_forward_equals_the_previous_formula_in_float32():
    """float32, as trained: one GEMM down, the scale, the g-weighted GEMM up. The layer now accumulates the up
    GEMM into the base output in place (``addmm_``), so only the float32 summation order differs."""
    a, b, s = _experts(3, 4, 12, 10, seed=5)
    a, b = [t.float() for t in a], [t.float() for t in b]
    layer = GatedLoRALinear(nn.Linear(12, 10), lora_A=a, lora_B=b, scaling=s)
    x = torch.randn(2, 7, 12)
    k, r, d_in = layer.lora_A.shape
    h = torch.nn.functional.linear(x, layer.lora_A.reshape(k * r, d_in)).view(2, 7, k, r) \
        * layer.scaling.view(1, 1, k, 1)
    g = torch.full((2, k), 1.0 / k)
    previous = layer.base(x) + (h * g[:, None, :, None]).reshape(2, 7, k * r) @ \
        layer.lora_B.transpose(1, 2).reshape(k * r, 10)
    torch.testing.assert_close(layer(x), previous, rtol=1e-6, atol=1e-5)


def test_lora_linear_equals_dense_formula_with_gradients():
    base = _base(7, 5, 0)
    layer = LoRALinear(copy.deepcopy(base), rank=3, alpha=4.5)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(4, 6, 7, dtype=DT)
    a, b = layer.lora_A.weight, layer.lora_B.weight
    y = layer(x)
    y_ref = _dense(x, base, [a], [b], [1.5], torch.ones(1, dtype=DT))
    torch.testing.assert_close(y, y_ref)
    grads = torch.autograd.grad(y.square().sum(), [a, b])
    grads_ref = torch.autograd.grad(y_ref.square().sum(), [a, b])
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(layer.delta_weight(), 1.5 * b @ a)
    torch.testing.assert_close(fold_delta(base, layer.delta_weight())(x), y)


@pytest.mark.parametrize("composition", ["output", "factors"])
def test_lorahub_layer_equals_dense_formula(composition):
    a, b, _ = _experts(3, 2, 6, 4, seed=7)
    s = [0.5, 0.5, 0.5] if composition == "factors" else [0.5, 1.0, 2.0]
    base = _base(6, 4, 1)
    coefficients = LoraHubCoefficients(num_experts=3)  # float32, as attach_lorahub makes them, on a float64 layer
    with torch.no_grad():
        coefficients.weight.copy_(torch.tensor([0.75, -0.25, 1.25]))  # exact in float32
    layer = LoraHubLinear(base=copy.deepcopy(base), experts=list(zip(a, b, s)), coefficients=coefficients,
                          composition=composition)
    x = torch.randn(5, 6, dtype=DT)
    c = coefficients.weight.to(DT)
    if composition == "output":
        y_ref = _dense(x, base, a, b, s, c)
    else:  # the original LoRAHub rule: (sum_k c_k B_k)(sum_k c_k A_k), one scale
        mixed_a, mixed_b = sum(c[i] * a[i] for i in range(3)), sum(c[i] * b[i] for i in range(3))
        y_ref = _dense(x, base, [mixed_a], [mixed_b], s[:1], torch.ones(1, dtype=DT))
    y = layer(x)
    torch.testing.assert_close(y, y_ref)
    grad, = torch.autograd.grad(y.sum(), coefficients.weight, retain_graph=True)
    grad_ref, = torch.autograd.grad(y_ref.sum(), coefficients.weight)
    torch.testing.assert_close(grad, grad_ref)
    torch.testing.assert_close(layer.merged_linear()(x), y.detach())


def test_attention_targets_use_the_same_delta():
    mha = nn.MultiheadAttention(8, 2, batch_first=True).to(DT)
    layer = LoRAMultiheadAttention(mha, targets=["q", "out"], rank=2, alpha=3.0)
    with torch.no_grad():
        for t in layer.targets:
            layer.lora_B[t].weight.normal_()
    for t in layer.targets:
        a, b = layer.lora_A[t].weight, layer.lora_B[t].weight
        torch.testing.assert_close(layer.delta_weight(t), 1.5 * b @ a)
        x = torch.randn(3, 8, dtype=DT)
        torch.testing.assert_close(layer.factors(t).residual(x), 1.5 * x @ (b @ a).T)


def test_gated_layer_relayout_cache_follows_writes_to_b():
    """The (K r, d_out) copy of the frozen B is re-made after load_state_dict / in-place writes and .to()."""
    a, b, s = _experts(3, 4, 12, 10, seed=7)
    layer = GatedLoRALinear(nn.Linear(12, 10), lora_A=a, lora_B=b, scaling=s).double()
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    first = layer(x)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    state["lora_B"] = state["lora_B"] * 2
    layer.load_state_dict(state)
    base = layer.base(x)
    torch.testing.assert_close(layer(x) - base, 2 * (first - base))
    layer.float()
    assert layer(x.float()).dtype == torch.float32


def test_flop_counter_counts_the_in_place_up_projection():
    """FlopCounterMode sees every GEMM of a LoRA-Avg forward: base, down (K r) and the in-place up (K r)."""
    from torch.utils.flop_counter import FlopCounterMode

    a, b, s = _experts(3, 4, 12, 10, seed=9)
    layer = GatedLoRALinear(nn.Linear(12, 10), lora_A=a, lora_B=b, scaling=s).float()
    x = torch.randn(2, 5, 12)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer(x)
    tokens, kr = 2 * 5, 3 * 4
    assert counter.get_total_flops() == 2 * tokens * (12 * 10 + 12 * kr + kr * 10)
