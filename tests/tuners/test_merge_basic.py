"""Known answers for the element-wise merges (LoRA-Avg, Task Arithmetic, TIES, DARE) and equivalence with peft."""
import pytest
import torch
from peft.utils import merge_utils as peft_merge

from plugins.tuners.merge_basic import (
    dare,
    dare_drop,
    lora_average,
    lora_delta,
    magnitude_prune,
    task_arithmetic,
    ties,
)


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_lora_average_is_mean():
    deltas = [_t([[1.0, 2.0], [3.0, 4.0]]), _t([[3.0, -2.0], [0.0, 1.0]]), _t([[-1.0, 3.0], [6.0, 1.0]])]
    # hand: ((1+3-1)/3, (2-2+3)/3; (3+0+6)/3, (4+1+1)/3)
    torch.testing.assert_close(lora_average(deltas), _t([[1.0, 1.0], [3.0, 2.0]]))


def test_task_arithmetic_scale_and_weights():
    d1, d2 = _t([[1.0, -2.0]]), _t([[4.0, 0.5]])
    torch.testing.assert_close(task_arithmetic([d1, d2], scale=0.5), _t([[2.5, -0.75]]))
    # weights (2, -1) then scale 3: 3 * (2*d1 - d2) = 3 * (-2, -4.5)
    torch.testing.assert_close(task_arithmetic([d1, d2], scale=3.0, weights=[2.0, -1.0]), _t([[-6.0, -13.5]]))


# Hand-computed TIES example, K = 3 experts of 4 entries, density 0.5 -> keep int(0.5 * 4) = 2 entries each.
#   tau1 = [ 4, -1,   2, -3]  -> trimmed [4,  0, 0, -3]
#   tau2 = [-2,  6,   1,  5]  -> trimmed [0,  6, 0,  5]
#   tau3 = [ 3, -7, 0.5, -1]  -> trimmed [3, -7, 0,  0]
# elect sign by total: sums [7, -1, 0, 2] -> [+, -, + (zero sum elects +), +]
# disjoint mean over the experts agreeing with the elected sign:
#   entry 0: mean(4, 3) = 3.5; entry 1: mean(-7) = -7; entry 2: nobody -> 0; entry 3: mean(5) = 5
# elect sign by frequency instead: sign sums [2, 0, 0, 0] -> all + -> entry 1 becomes mean(6) = 6
TIES_TAUS = [_t([[4.0, -1.0, 2.0, -3.0]]), _t([[-2.0, 6.0, 1.0, 5.0]]), _t([[3.0, -7.0, 0.5, -1.0]])]


def test_ties_hand_computed():
    torch.testing.assert_close(ties(TIES_TAUS, density=0.5), _t([[3.5, -7.0, 0.0, 5.0]]))
    torch.testing.assert_close(ties(TIES_TAUS, density=0.5, scale=2.0), _t([[7.0, -14.0, 0.0, 10.0]]))
    torch.testing.assert_close(
        ties(TIES_TAUS, density=0.5, majority_sign_method="frequency"), _t([[3.5, 6.0, 0.0, 5.0]])
    )


def test_magnitude_prune_hand_computed():
    # trimmed sum: [4+0+3, 0+6-7, 0, -3+5+0] = [7, -1, 0, 2]
    torch.testing.assert_close(magnitude_prune(TIES_TAUS, density=0.5), _t([[7.0, -1.0, 0.0, 2.0]]))


def test_ties_matches_peft():
    g = torch.Generator().manual_seed(0)
    deltas = [torch.randn(6, 5, generator=g) for _ in range(3)]
    w = torch.tensor([0.5, 1.0, 2.0])
    ours = ties(deltas, density=0.4, scale=1.5, weights=w)
    torch.testing.assert_close(ours, peft_merge.ties(deltas, 1.5 * w, 0.4))
    torch.testing.assert_close(ours, 1.5 * ties(deltas, density=0.4, weights=w))  # lambda after the disjoint mean


# Hand-computed DARE, p = 0.5 (survivors x 2), fixed keep masks:
#   tau1 = [[1, 2], [3, 4]],  m1 = [[1, 0], [1, 1]] -> [[2, 0], [6, 8]]
#   tau2 = [[-1, 0.5], [2, -5]], m2 = all ones    -> [[-2, 1], [4, -10]]
# linear: [[0, 1], [10, -2]]
# ties (no trimming): elected signs from the sums [[0, 1], [10, -2]] -> [[+, +], [+, -]]
#   (0,0): only 2 is + -> 2; (0,1): only 1 -> 1; (1,0): mean(6, 4) = 5; (1,1): only -10 -> -10
DARE_TAUS = [_t([[1.0, 2.0], [3.0, 4.0]]), _t([[-1.0, 0.5], [2.0, -5.0]])]
DARE_MASKS = [_t([[1, 0], [1, 1]]).bool(), torch.ones(2, 2, dtype=torch.bool)]


def test_dare_fixed_mask_hand_computed():
    torch.testing.assert_close(
        dare_drop(DARE_TAUS[0], drop_rate=0.5, keep_mask=DARE_MASKS[0]), _t([[2.0, 0.0], [6.0, 8.0]])
    )
    lin = dare(DARE_TAUS, drop_rate=0.5, keep_masks=DARE_MASKS, combination="linear")
    torch.testing.assert_close(lin, _t([[0.0, 1.0], [10.0, -2.0]]))
    tie = dare(DARE_TAUS, drop_rate=0.5, keep_masks=DARE_MASKS, combination="ties")
    torch.testing.assert_close(tie, _t([[2.0, 1.0], [5.0, -10.0]]))
    torch.testing.assert_close(
        dare(DARE_TAUS, drop_rate=0.5, keep_masks=DARE_MASKS, scale=0.5), _t([[0.0, 0.5], [5.0, -1.0]])
    )


@pytest.mark.parametrize("combination,peft_fn", [("linear", peft_merge.dare_linear), ("ties", peft_merge.dare_ties)])
def test_dare_matches_peft_with_same_seed(combination, peft_fn):
    g = torch.Generator().manual_seed(1)
    deltas = [torch.randn(7, 9, generator=g) for _ in range(3)]
    w = torch.tensor([1.0, 0.5, 2.0])
    torch.manual_seed(123)  # peft draws its masks from the global RNG
    expected = peft_fn(deltas, w, 0.75)
    ours = dare(deltas, drop_rate=0.25, combination=combination, weights=w, seed=123)
    torch.testing.assert_close(ours, expected)


def test_dare_is_seeded_and_unbiased():
    delta = torch.randn(50, 40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a = dare([delta], drop_rate=0.7, seed=5)
    torch.testing.assert_close(a, dare([delta], drop_rate=0.7, seed=5))
    assert not torch.equal(a, dare([delta], drop_rate=0.7, seed=6))
    kept = a != 0
    assert 0.2 < kept.double().mean().item() < 0.4  # about 1 - p = 30 % survive
    torch.testing.assert_close(a[kept], delta[kept] / 0.3)  # survivors rescaled by exactly 1 / (1 - p)
    g = torch.Generator().manual_seed(0)
    mean = torch.stack([dare_drop(delta, drop_rate=0.7, generator=g) for _ in range(400)]).mean(0)
    # E[drop(delta)] = delta; per-entry std of the 400-draw mean = |delta| * sqrt(p / (1-p) / 400) ~ 0.076 |delta|
    assert ((mean - delta).abs() / delta.abs().clamp_min(1e-3)).median() < 0.1


def test_lora_delta_matches_peft_layer():
    from peft import LoraConfig, get_peft_model

    model = torch.nn.Sequential()
    model.add_module("fc", torch.nn.Linear(6, 5))
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=6, target_modules=["fc"]))
    layer = peft_model.base_model.model.fc
    torch.nn.init.normal_(layer.lora_B["default"].weight)
    expected = layer.get_delta_weight("default")
    ours = lora_delta(layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"])
    assert layer.scaling["default"] == 3.0
    torch.testing.assert_close(ours, expected)


def test_input_errors_are_explicit():
    with pytest.raises(ValueError, match="empty"):
        lora_average([])
    with pytest.raises(ValueError, match="expert 1"):
        task_arithmetic([torch.zeros(2, 3), torch.zeros(3, 2)])
    with pytest.raises(ValueError, match="3 expert weights for 2"):
        task_arithmetic([torch.zeros(2), torch.zeros(2)], weights=[1, 2, 3])
    with pytest.raises(ValueError, match="density"):
        ties([torch.zeros(2)], density=1.5)
    with pytest.raises(ValueError, match="drop rate"):
        dare([torch.zeros(2)], drop_rate=1.0)
    with pytest.raises(ValueError, match="combination"):
        dare([torch.zeros(2)], drop_rate=0.1, combination="mean")
    with pytest.raises(ValueError, match="LoRA factors"):
        lora_delta(torch.zeros(2, 4), torch.zeros(3, 3), 1.0)
