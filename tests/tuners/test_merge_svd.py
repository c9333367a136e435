"""Known answers for the SVD merges (KnOTS, TSV-M) and for merge_state_dicts."""
import pytest
import torch

from plugins.tuners.merge import MERGE_METHODS, merge_deltas, merge_state_dicts
from plugins.tuners.merge_basic import task_arithmetic, ties
from plugins.tuners.merge_svd import knots, knots_factors, thin_svd, tsv_merge, tsv_merge_factors

DT = torch.float64


def _low_rank(d_out, d_in, r, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d_out, r, generator=g, dtype=DT) @ torch.randn(r, d_in, generator=g, dtype=DT)


def _orthogonal(n, seed):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=DT))
    return q


def test_thin_svd_drops_null_components():
    delta = _low_rank(12, 9, 3, 0)
    U, s, Vh = thin_svd(delta)
    assert s.numel() == 3 and U.shape == (12, 3) and Vh.shape == (3, 9)
    torch.testing.assert_close(U * s @ Vh, delta)
    assert thin_svd(torch.zeros(4, 3))[1].numel() == 0


def test_knots_single_expert_is_lossless():
    delta = _low_rank(12, 10, 4, 1)
    torch.testing.assert_close(knots([delta], combination="task_arithmetic"), delta)
    torch.testing.assert_close(knots([delta], combination="ties", density=1.0), delta)


def test_knots_identical_experts_give_the_delta():
    delta = _low_rank(10, 8, 3, 2)
    torch.testing.assert_close(knots([delta] * 3, combination="task_arithmetic", scale=1 / 3), delta)
    torch.testing.assert_close(knots([delta] * 3, combination="lora_average"), delta)
    torch.testing.assert_close(knots([delta] * 3, combination="ties", density=1.0), delta)


def test_knots_task_arithmetic_equals_plain_task_arithmetic():
    # delta_k = U C_k exactly, and TA is linear, so KnOTS-TA must reproduce TA of the raw deltas
    deltas = [_low_rank(16, 12, 4, s) for s in range(3)]
    U, C = knots_factors(deltas, combination="task_arithmetic", scale=0.7)
    assert U.shape == (16, 12) and C.shape == (12, 12)  # rank of [d1 d2 d3] = min(16, 3 * 4)
    torch.testing.assert_close(U.T @ U, torch.eye(12, dtype=DT))
    torch.testing.assert_close(U @ C, task_arithmetic(deltas, scale=0.7))


def test_knots_ties_hand_computed_sign_conflict():
    # delta1 = 3 u v^T, delta2 = -u v^T (unit u, v). [delta1, delta2] = u [3 v^T, -v^T]: rank 1, coefficients
    # C1 = 3 sigma v^T, C2 = -sigma v^T (sigma = +-1, the SVD's sign). TIES (no trim): the elected sign of each
    # entry is sign(2 sigma v_j), only C1 agrees -> merged C = 3 sigma v^T -> U C = 3 u v^T (TA would give 2 u v^T).
    u = torch.tensor([1.0, 2.0, -2.0], dtype=DT) / 3
    v = torch.tensor([0.6, 0.0, -0.8, 0.0], dtype=DT)
    d1, d2 = 3 * torch.outer(u, v), -torch.outer(u, v)
    torch.testing.assert_close(knots([d1, d2], combination="ties", density=1.0), 3 * torch.outer(u, v))
    torch.testing.assert_close(knots([d1, d2], combination="task_arithmetic"), 2 * torch.outer(u, v))


def test_knots_ties_trims_in_the_aligned_basis():
    deltas = [_low_rank(10, 8, 2, s) for s in range(3)]
    merged = knots(deltas, combination="ties", density=0.3, keep="peft")
    U, s, Vh = thin_svd(torch.cat(deltas, dim=1))
    coeffs = list((s[:, None] * Vh).split(8, dim=1))
    torch.testing.assert_close(merged, U @ ties(coeffs, density=0.3))
    assert not torch.allclose(merged, ties(deltas, density=0.3))  # not the same as TIES on raw deltas


def test_knots_dare_is_seeded():
    deltas = [_low_rank(10, 8, 2, s) for s in range(3)]
    a = knots(deltas, combination="dare", drop_rate=0.5, seed=3)
    torch.testing.assert_close(a, knots(deltas, combination="dare", drop_rate=0.5, seed=3))
    assert not torch.allclose(a, knots(deltas, combination="dare", drop_rate=0.5, seed=4))


def _disjoint_experts(d_out, d_in, ranks, seed):
    """Experts whose left and right singular subspaces are mutually orthogonal (disjoint column blocks of two
    orthogonal matrices), with known descending singular values."""
    P, Q = _orthogonal(d_out, seed), _orthogonal(d_in, seed + 100)
    experts, start = [], 0
    for k, r in enumerate(ranks):
        s = torch.arange(r, 0, -1, dtype=DT) * (k + 1.5)  # descending
        cols = slice(start, start + r)
        experts.append((P[:, cols], s, Q[:, cols]))
        start += r
    return experts


def test_tsv_orthogonal_tasks_equal_sum_of_truncated_deltas():
    experts = _disjoint_experts(18, 15, [4, 4, 4], seed=0)
    deltas = [U * s @ V.T for U, s, V in experts]
    # default rank per task = floor(15 / 3) = 5 >= 4: nothing truncated, subspaces already orthogonal -> plain sum
    torch.testing.assert_close(tsv_merge(deltas), sum(deltas))
    # keep the top 2 components of each task: sum of the rank-2 truncations (known singular vectors)
    truncated = sum(U[:, :2] * s[:2] @ V[:, :2].T for U, s, V in experts)
    torch.testing.assert_close(tsv_merge(deltas, rank_per_task=2), truncated)
    torch.testing.assert_close(tsv_merge(deltas, rank_per_task=2, scale=0.5), 0.5 * truncated)


def test_tsv_single_expert_full_rank_is_lossless():
    delta = _low_rank(9, 7, 7, 3)
    torch.testing.assert_close(tsv_merge([delta]), delta)


def test_tsv_rank_and_orthonormal_factors():
    deltas = [_low_rank(20, 16, 6, s) for s in range(3)]  # overlapping random subspaces
    B, A = tsv_merge_factors(deltas, rank_per_task=3)
    assert B.shape == (20, 9) and A.shape == (9, 16)
    torch.testing.assert_close(A @ A.T, torch.eye(9, dtype=DT))  # V_perp orthonormal
    Bn = B / B.norm(dim=0, keepdim=True)
    torch.testing.assert_close(Bn.T @ Bn, torch.eye(9, dtype=DT))  # U_perp orthonormal, scaled by s_hat
    merged = tsv_merge(deltas, rank_per_task=3)
    assert torch.linalg.matrix_rank(merged).item() <= 9
    # default: floor(16 / 3) = 5 per task, each delta has rank 6 -> 15 components
    assert tsv_merge_factors(deltas)[0].shape == (20, 15)
    # LoRA deltas of rank 2 < 5: every component kept, rank <= 6
    lora = [_low_rank(20, 16, 2, s + 10) for s in range(3)]
    assert tsv_merge_factors(lora)[1].shape == (6, 16)
    assert torch.linalg.matrix_rank(tsv_merge(lora)).item() <= 6


def test_svd_merges_keep_dtype_and_reject_non_matrices():
    deltas = [_low_rank(6, 5, 2, s).float() for s in range(2)]
    assert knots(deltas).dtype == torch.float32 and tsv_merge(deltas).dtype == torch.float32
    with pytest.raises(ValueError, match=r"\(d_out, d_in\)"):
        tsv_merge([torch.zeros(4), torch.zeros(4)])
    with pytest.raises(ValueError, match="KnOTS combination"):
        knots(deltas, combination="sum")
    assert tsv_merge([torch.zeros(4, 3), torch.zeros(4, 3)]).abs().sum() == 0


def test_merge_state_dicts_applies_method_per_layer():
    experts = [{"blk.qkv": _low_rank(9, 6, 2, 10 * k), "blk.fc": _low_rank(4, 6, 2, 10 * k + 1)} for k in range(3)]
    for method, kw in [("lora_average", {}), ("ties", {"density": 0.5}), ("tsv_merge", {}), ("knots", {})]:
        merged = merge_state_dicts(experts, method, **kw)
        assert list(merged) == ["blk.qkv", "blk.fc"]
        for key in merged:
            torch.testing.assert_close(merged[key], merge_deltas([e[key] for e in experts], method, **kw))
    assert set(MERGE_METHODS) == {
        "lora_average", "task_arithmetic", "magnitude_prune", "ties", "dare", "knots", "tsv_merge"
    }


def test_merge_state_dicts_dare_masks_differ_between_layers_and_are_seeded():
    same = _low_rank(8, 8, 8, 0)
    experts = [{"a": same, "b": same.clone()} for _ in range(2)]
    m1 = merge_state_dicts(experts, "dare", drop_rate=0.5, seed=7)
    m2 = merge_state_dicts(experts, "dare", drop_rate=0.5, seed=7)
    torch.testing.assert_close(m1["a"], m2["a"])
    torch.testing.assert_close(m1["b"], m2["b"])
    assert not torch.equal(m1["a"], m1["b"])  # one generator threads through the layers


def test_merge_state_dicts_errors_name_the_problem():
    with pytest.raises(KeyError, match="missing"):
        merge_state_dicts([{"a": torch.zeros(2, 2)}, {"b": torch.zeros(2, 2)}], "lora_average")
    with pytest.raises(ValueError, match="unknown merge method"):
        merge_state_dicts([{"a": torch.zeros(2, 2)}], "mean")
    with pytest.raises(ValueError, match="layer 'norm.weight'"):
        merge_state_dicts([{"norm.weight": torch.zeros(3)}] * 2, "tsv_merge")


def test_low_rank_factors_give_the_same_merges_as_dense_deltas():
    from plugins.tuners.merge_svd import LowRankDelta, factored_svd

    g = torch.Generator().manual_seed(5)
    factors = [LowRankDelta(torch.randn(14, 3, generator=g, dtype=DT), torch.randn(3, 11, generator=g, dtype=DT))
               for _ in range(3)]
    dense = [f.dense() for f in factors]
    U, s, Vh = factored_svd(factors[0].B, factors[0].A)
    torch.testing.assert_close(s, torch.linalg.svdvals(dense[0])[:3])
    torch.testing.assert_close(U * s @ Vh, dense[0])
    for kw in [dict(combination="task_arithmetic"), dict(combination="ties", density=0.4)]:
        torch.testing.assert_close(knots(factors, **kw), knots(dense, **kw))
    torch.testing.assert_close(tsv_merge(factors), tsv_merge(dense))
    torch.testing.assert_close(tsv_merge(factors, rank_per_task=2), tsv_merge(dense, rank_per_task=2))
    experts = [{"l": f} for f in factors]
    torch.testing.assert_close(merge_state_dicts(experts, "ties", density=0.5)["l"], ties(dense, density=0.5))
    torch.testing.assert_close(merge_state_dicts(experts, "tsv_merge")["l"], tsv_merge(dense))


@pytest.mark.parametrize("d_out, d_in, r, k", [(6, 20, 4, 3),   # KnOTS: K r = 12 > d_out
                                                (20, 5, 8, 2),   # TSV-M: r > d_in
                                                (5, 6, 8, 3)])   # r > both dimensions
def test_factored_merges_when_the_stacked_rank_exceeds_a_layer_dimension(d_out, d_in, r, k):
    """Reduced SVD: factors whose rank exceeds min(d_out, d_in) (or K r > d_out) give the dense result."""
    from plugins.tuners.merge_svd import LowRankDelta, factored_svd

    g = torch.Generator().manual_seed(7)
    factors = [LowRankDelta(torch.randn(d_out, r, generator=g, dtype=DT), torch.randn(r, d_in, generator=g, dtype=DT))
               for _ in range(k)]
    dense = [f.dense() for f in factors]
    U, s, Vh = factored_svd(factors[0].B, factors[0].A)
    torch.testing.assert_close(U * s @ Vh, dense[0])
    torch.testing.assert_close(knots(factors), knots(dense))
    torch.testing.assert_close(knots(factors, combination="ties", density=0.5),
                               knots(dense, combination="ties", density=0.5))
    torch.testing.assert_close(tsv_merge(factors, rank_per_task=r), tsv_merge(dense, rank_per_task=r))


def test_knots_keeps_one_more_coefficient_than_peft_by_the_authors_rule():
    """One task, TIES at density 0.25 over R x d_in = 2 x 4 = 8 coefficients: the KnOTS code keeps int(2) + 1 = 3,
    peft's rule 2; with one task the merge is U @ (the trimmed coefficients)."""
    delta = torch.tensor([[4.0, -3.0, 2.0, 1.0], [0.5, 0.25, -0.125, 0.0625]], dtype=DT)
    for keep, expected in (("authors", 3), ("peft", 2)):
        U, C = knots_factors([delta], combination="ties", density=0.25, keep=keep)
        assert int((C.abs() > 1e-12).sum()) == expected
    with pytest.raises(ValueError, match="keep"):
        knots([delta], combination="ties", density=0.25, keep="nobody")


def test_ties_trim_over_the_whole_model_uses_one_threshold_per_expert():
    """Two layers, one expert of magnitudes {1, 2, 3, 4} (layer a) and {10, 20} (layer b), density 0.5: the TIES
    paper's model-wide trim keeps the 3 largest (4, 10, 20: layer a keeps only 4); peft's per-layer trim keeps the
    top half of each layer (3, 4 and 20)."""
    a = torch.tensor([[1.0, -2.0], [3.0, -4.0]], dtype=DT)
    b = torch.tensor([[10.0, -20.0]], dtype=DT)
    experts = [{"a": a, "b": b}]
    model = merge_state_dicts(experts, "ties", density=0.5, trim_scope="model")
    torch.testing.assert_close(model["a"], torch.tensor([[0.0, 0.0], [0.0, -4.0]], dtype=DT))
    torch.testing.assert_close(model["b"], b)
    layer = merge_state_dicts(experts, "ties", density=0.5)
    torch.testing.assert_close(layer["a"], torch.tensor([[0.0, 0.0], [3.0, -4.0]], dtype=DT))
    torch.testing.assert_close(layer["b"], torch.tensor([[0.0, -20.0]], dtype=DT))
    with pytest.raises(ValueError, match="trim_scope"):
        merge_state_dicts(experts, "ties", density=0.5, trim_scope="world")
