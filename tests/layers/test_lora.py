"""LoRALinear: zero-init equals the base, same numbers as peft's LoRA layer, merge equals the branch."""
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from plugins.layers.lora import LoRALinear, lora_residual


def _base(seed=0, d_in=6, d_out=5):
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out)


def test_zero_init_equals_base():
    base = _base()
    layer = LoRALinear(base, rank=3, alpha=6.0)
    x = torch.randn(4, 7, 6)
    assert torch.equal(layer(x), base(x))
    assert layer.scaling == 2.0
    assert torch.count_nonzero(layer.lora_A.weight) > 0 and torch.count_nonzero(layer.lora_B.weight) == 0


def test_hand_computed_residual():
    base = nn.Linear(2, 2)
    with torch.no_grad():
        base.weight.copy_(torch.eye(2))
        base.bias.zero_()
    layer = LoRALinear(base, rank=1, alpha=2.0)  # s = 2
    with torch.no_grad():
        layer.lora_A.weight.copy_(torch.tensor([[1.0, 2.0]]))    # A (1, 2)
        layer.lora_B.weight.copy_(torch.tensor([[3.0], [-1.0]]))  # B (2, 1)
    x = torch.tensor([[1.0, 1.0]])
    # x W^T = [1, 1]; x A^T = 3; s * 3 * B^T = [18, -6]
    assert torch.allclose(layer(x), torch.tensor([[19.0, -5.0]]))


def test_matches_peft_layer():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 5))
    ours = LoRALinear(nn.Linear(6, 5), rank=2, alpha=5.0)
    ours.base.load_state_dict(model[0].state_dict())
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=5.0, target_modules=["0"]), model)
    with torch.no_grad():
        ours.lora_B.weight.normal_()
        model[0].lora_A["default"].weight.copy_(ours.lora_A.weight)
        model[0].lora_B["default"].weight.copy_(ours.lora_B.weight)
    x = torch.randn(3, 6)
    assert torch.allclose(ours(x), model(x), atol=1e-6)


def test_merged_linear_and_residual_function():
    layer = LoRALinear(_base(2), rank=2, alpha=4.0)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(3, 4, 6)
    assert torch.allclose(layer.merged()(x), layer(x), atol=1e-5)
    res = lora_residual(x, layer.lora_A.weight, layer.lora_B.weight, layer.scaling)
    assert torch.allclose(layer.base(x) + res, layer(x), atol=1e-6)


def test_only_lora_trains_and_gets_gradients():
    layer = LoRALinear(_base(3), rank=2, alpha=2.0, dropout=0.1)
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A.weight", "lora_B.weight"}
    layer(torch.randn(2, 6)).pow(2).sum().backward()
    assert layer.lora_B.weight.grad is not None and torch.count_nonzero(layer.lora_B.weight.grad) > 0
    with_bias = LoRALinear(_base(3), rank=2, alpha=2.0, train_bias=True)
    assert with_bias.base.bias.requires_grad and not with_bias.base.weight.requires_grad
