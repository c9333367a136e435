"""Equality with fast-reid's own rankings (its Python fallback and its compiled Cython code, built from the
.pyx into pytest's cache dir), both run with a stable argsort so ties follow our documented order."""
import numpy as np
import pytest

from fastreid.evaluation import rank as fastreid_rank
from plugins.evaluation import evaluate_rank
from plugins.evaluation.reference import stable_argsort


def random_case(seed, num_q, num_g, num_ids, num_cams, tie_levels=None, id_low=0):
    rng = np.random.default_rng(seed)
    dist = rng.random((num_q, num_g)).astype(np.float32)
    if tie_levels:                                     # quantised distances: many exact ties
        dist = (np.round(dist * tie_levels) / tie_levels).astype(np.float32)
    return (dist, rng.integers(id_low, num_ids, num_q), rng.integers(id_low, num_ids, num_g),
            rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g))


def assert_same(ref, ours):
    np.testing.assert_array_equal(np.asarray(ref[0], np.float32), ours[0])          # CMC exactly
    np.testing.assert_allclose(np.asarray(ref[1], np.float64), ours[1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ref[2], np.float64), ours[2], rtol=0, atol=1e-6)
    assert np.mean(ref[1]) == pytest.approx(np.mean(ours[1]), abs=1e-6)
    assert np.mean(ref[2]) == pytest.approx(np.mean(ours[2]), abs=1e-6)


def test_stable_argsort_is_active_inside_the_context():
    tied = np.zeros((1, 100), np.float32)
    with stable_argsort():
        np.testing.assert_array_equal(np.argsort(tied, axis=1)[0], np.arange(100))
    assert np.argsort is not None and np.argsort.__module__.startswith("numpy")


@pytest.mark.parametrize("seed,ties", [(0, None), (1, 20), (2, None), (3, 7)])
def test_equals_python_reference_market(seed, ties):
    # G >= 50 and every kept ranking >= 50 items, where fast-reid's Python fallback is well defined;
    # ids -1 and 0 included (junk / distractors)
    case = random_case(seed, 60, 300, 40, 6, ties, id_low=-1)
    with stable_argsort():
        ref = fastreid_rank.eval_market1501(*case, max_rank=50)
    assert_same(ref, evaluate_rank(*case, max_rank=50))


@pytest.mark.parametrize("seed,ties", [(0, None), (1, 20)])
def test_equals_python_reference_cuhk03_same_seed(seed, ties):
    case = random_case(seed, 30, 200, 20, 3, ties)
    with stable_argsort():
        np.random.seed(123)
        ref_cmc, ref_map = fastreid_rank.eval_cuhk03(*case, max_rank=10)
    ref_next = np.random.random()
    np.random.seed(123)
    cmc, mean_ap = evaluate_rank(*case, max_rank=10, use_metric_cuhk03=True)
    assert np.random.random() == ref_next                       # same RNG consumption
    np.testing.assert_allclose(cmc, ref_cmc, rtol=0, atol=1e-6)   # Python sums in float64, compiled in float32
    assert mean_ap == pytest.approx(ref_map, abs=1e-6)


@pytest.mark.parametrize("seed,num_q,num_g,num_ids,ties", [
    (0, 80, 400, 50, None), (1, 80, 400, 50, 10), (2, 40, 60, 30, None),    # kept ranking < 50 for some
    (3, 30, 20, 6, None), (4, 30, 12, 4, 5), (5, 50, 49, 3, None),          # gallery < max_rank
])
def test_equals_compiled_reference(compiled_ranking, seed, num_q, num_g, num_ids, ties):
    case = random_case(seed, num_q, num_g, num_ids, 4, ties, id_low=-1)
    for cuhk03 in (False, True):
        with stable_argsort():
            np.random.seed(7)
            ref = compiled_ranking.evaluate_cy(*case, 50, cuhk03)
        ref_next = np.random.random()
        np.random.seed(7)
        ours = evaluate_rank(*case, max_rank=50, use_metric_cuhk03=cuhk03)
        assert np.random.random() == ref_next
        if cuhk03:
            np.testing.assert_array_equal(ref[0], ours[0])     # float32 accumulation reproduced exactly
            assert ours[1] == pytest.approx(ref[1], abs=1e-6)
        else:
            assert_same(ref, ours)


def test_compiled_reference_skips_queries_like_us(compiled_ranking):
    case = list(random_case(9, 40, 100, 60, 4))
    case[1][:10] = 1000                                          # ids absent from the gallery
    with stable_argsort():
        ref = compiled_ranking.evaluate_cy(*case, 50, False)
    ours = evaluate_rank(*case)
    assert len(ref[1]) == len(ours[1]) <= 30
    assert_same(ref, ours)
