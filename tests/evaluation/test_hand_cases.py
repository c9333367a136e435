"""Tiny cases whose CMC / AP / INP are worked out by hand in the comments."""
import numpy as np
import pytest
import torch

from plugins.evaluation import evaluate_distmat, evaluate_features, evaluate_rank

F32_TEN_TENTHS = np.float32(0)
for _ in range(10):                       # fast-reid's CUHK03 CMC adds 1/10 ten times in float32
    F32_TEN_TENTHS += np.float32(1) / np.float32(10)


def test_market_removal_skip_and_metrics():
    # gallery:      0          1          2          3          4          5
    g_pids = np.array([1, 2, 1, 3, 1, 2])
    g_cams = np.array([0, 1, 1, 0, 2, 2])
    dist = np.array([
        # q0 = id 1 cam 0: g0 removed (same id+cam); kept order g1 g2 g3 g4 g5 -> matches at ranks 1, 3
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        # q1 = id 2 cam 1: g1 removed; kept order g5 g4 g3 g2 g0 -> match at rank 0
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.05],
        # q2 = id 4: not in the gallery -> skipped
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
    ], dtype=np.float32)
    q_pids, q_cams = np.array([1, 2, 4]), np.array([0, 1, 0])
    res = evaluate_distmat(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5)
    # q0: AP = (1/2 + 2/4) / 2 = 0.5, INP = 2 / 4; q1: AP = 1, INP = 1
    np.testing.assert_allclose(res.all_AP, [0.5, 1.0])
    np.testing.assert_allclose(res.all_INP, [0.5, 1.0])
    np.testing.assert_array_equal(res.cmc, np.float32([0.5, 1, 1, 1, 1]))
    assert res.num_skipped == 1 and list(res.valid_query) == [0, 1]
    out = res.fastreid_results()
    assert out["Rank-1"] == pytest.approx(50) and out["mAP"] == pytest.approx(75) and out["mINP"] == pytest.approx(75)
    assert out["metric"] == pytest.approx((0.75 + 0.5) / 2 * 100)
    cmc, all_ap, all_inp = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5)
    np.testing.assert_allclose(all_ap, [0.5, 1.0]) and np.testing.assert_allclose(all_inp, [0.5, 1.0])


def test_ties_are_broken_by_gallery_index():
    # q = id 1 cam 0; g4 (0.1) first, then the tied g0 g1 g2 g3 in index order: nm, m, m, nm
    g_pids, g_cams = np.array([2, 1, 1, 3, 5]), np.array([1, 1, 2, 1, 1])
    dist = np.array([[0.5, 0.5, 0.5, 0.5, 0.1]], dtype=np.float32)
    res = evaluate_distmat(dist, [1], g_pids, [0], g_cams, max_rank=5)
    # matches at ranks 2, 3: AP = (1/3 + 2/4) / 2, INP = 2 / 4, first hit at rank 2
    np.testing.assert_allclose(res.all_AP, [(1 / 3 + 2 / 4) / 2])
    np.testing.assert_allclose(res.all_INP, [0.5])
    np.testing.assert_array_equal(res.cmc, np.float32([0, 0, 1, 1, 1]))
    # -0.0 and 0.0 are a tie too (as for numpy's sort): the non-match g0 at -0.0 stays before the match g1
    res = evaluate_distmat(np.array([[-0.0, 0.0, 1.0]], dtype=np.float32), [1], [2, 1, 3], [0], [1, 1, 1],
                           max_rank=3)
    np.testing.assert_allclose(res.all_AP, [0.5])


def test_junk_and_distractor_ids_are_ordinary_non_matches():
    # fast-reid compares ids as integers: gallery junk (-1) and distractors (0) just rank as non-matches
    g_pids, g_cams = np.array([-1, 0, 7, 7]), np.array([1, 1, 1, 0])
    dist = np.array([[0.1, 0.2, 0.3, 0.05]], dtype=np.float32)
    res = evaluate_distmat(dist, [7], g_pids, [0], g_cams, max_rank=3)
    # g3 (same id + cam) removed; kept g0 g1 g2 -> one match at rank 2: AP = INP = 1/3
    np.testing.assert_allclose(res.all_AP, [1 / 3])
    np.testing.assert_allclose(res.all_INP, [1 / 3])
    np.testing.assert_array_equal(res.cmc, np.float32([0, 0, 1]))
    # a query with id -1 matches other-camera -1 items, exactly as the reference does:
    # nothing removed, order g3 (0.05) g0 (0.1, the match) -> AP = 1/2
    res = evaluate_distmat(dist, [-1], g_pids, [0], g_cams, max_rank=3)
    np.testing.assert_allclose(res.all_AP, [0.5])


def test_short_kept_ranking_reuses_the_compiled_cmc_buffer():
    # G = 4 < max_rank -> max_rank = 4. g0 id1 cam1, g1 id2 cam0, g2 id3 cam0, g3 id2 cam1.
    g_pids, g_cams = np.array([1, 2, 3, 2]), np.array([1, 0, 0, 1])
    dist = np.array([
        # qA = id 2 cam 0: g1 removed, kept g3 g0 g2 (3 items): hit at rank 0 -> [1, 1, 1, buffer[3] = 0]
        [0.2, 0.05, 0.3, 0.1],
        # qB = id 1 cam 0: nothing removed, order g1 g2 g0 g3: hit at rank 2 -> [0, 0, 1, 1]
        [0.3, 0.1, 0.2, 0.4],
    ], dtype=np.float32)
    res = evaluate_distmat(dist, [2, 1], g_pids, [0, 0], g_cams)
    np.testing.assert_array_equal(res.cmc, np.float32([0.5, 0.5, 1.0, 0.5]))
    # fed the other way round, qA's tail reads qB's 1 left in the buffer
    res = evaluate_distmat(dist[::-1].copy(), [1, 2], g_pids, [0, 0], g_cams)
    np.testing.assert_array_equal(res.cmc, np.float32([0.5, 0.5, 1.0, 1.0]))


def test_cuhk03_single_shot_without_randomness():
    # one kept item per gallery id -> the draw is forced; q = id 1 cam 0, order g0 (id 2) g1 (id 1) g2 (id 3)
    dist = np.array([[0.1, 0.2, 0.3]], dtype=np.float32)
    cmc, mean_ap = evaluate_rank(dist, np.array([1]), np.array([2, 1, 3]), np.array([0]), np.array([1, 1, 1]),
                                 use_metric_cuhk03=True)
    np.testing.assert_array_equal(cmc, np.array([0, F32_TEN_TENTHS, F32_TEN_TENTHS], dtype=np.float32))
    assert mean_ap == pytest.approx(0.5)
    # CMC past the number of sampled ids is 0 (compiled code): 2 ids in a gallery of 3 items
    dist = np.array([[0.2, 0.1, 0.3]], dtype=np.float32)
    cmc, _ = evaluate_rank(dist, np.array([1]), np.array([1, 1, 2]), np.array([0]), np.array([1, 1, 1]),
                           use_metric_cuhk03=True)
    np.testing.assert_array_equal(cmc, np.array([F32_TEN_TENTHS, F32_TEN_TENTHS, 0], dtype=np.float32))


def test_msvr310_removes_same_vehicle_same_scene():
    # camids carry scenes. q = vehicle 1 scene 0; g0 vehicle 1 scene 0 (removed although closest),
    # g1 vehicle 1 scene 1, g2 vehicle 2 scene 0 -> kept g2 g1: match at rank 1
    dist = np.array([[0.1, 0.3, 0.2]], dtype=np.float32)
    res = evaluate_distmat(dist, [1], [1, 1, 2], [0], [0, 1, 0], protocol="msvr310", max_rank=2)
    np.testing.assert_allclose(res.all_AP, [0.5])
    np.testing.assert_array_equal(res.cmc, np.float32([0, 1]))


def test_text_to_image_no_camera_filter():
    # two captions against 11 images; 8 distractor images (id 9) point away from both queries
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.cat([torch.tensor([[0.6, 0.8], [1.0, 0.1], [0.0, 1.0]]), torch.full((8, 2), -1.0)])
    q_pids, g_pids = [1, 2], [1, 2, 1] + [9] * 8
    same_cam = [0] * 11                      # identical "cameras" must not remove anything here
    res = evaluate_features(q, g, q_pids, g_pids, [0, 0], same_cam, protocol="text", progress=False)
    # q0 cos: g1 .995 > g0 .6 > g2 0 -> matches (g0, g2) at ranks 1, 2: AP = (1/2 + 2/3) / 2, INP = 2/3
    # q1 cos: g2 1 > g0 .8 > g1 .0995 -> match g1 at rank 2: AP = 1/3, INP = 1/3
    np.testing.assert_allclose(res.all_AP, [(1 / 2 + 2 / 3) / 2, 1 / 3])
    np.testing.assert_allclose(res.all_INP, [2 / 3, 1 / 3])
    out = res.retrieval_results()
    assert out["R1"] == 0 and out["R5"] == 100 and out["R10"] == 100
    assert out["mAP"] == pytest.approx(100 * 11 / 24) and out["mINP"] == pytest.approx(50)


def test_duplicate_features_rank_by_index():
    # g0 and g1 are the same vector (equal distances); g0 is a non-match, g1 a match; g2 a farther match
    f = torch.tensor([[1.0, 0.2]])
    g = torch.tensor([[0.9, 0.5], [0.9, 0.5], [0.0, 1.0], [-1.0, 0.0]])
    res = evaluate_features(f, g, [1], [2, 1, 1, 3], [0], [1, 1, 1, 1], max_rank=4, progress=False)
    np.testing.assert_allclose(res.all_AP, [(1 / 2 + 2 / 3) / 2])      # ranks 1, 2
    res = evaluate_features(f, g, [1], [1, 2, 1, 3], [0], [1, 1, 1, 1], max_rank=4, progress=False)
    np.testing.assert_allclose(res.all_AP, [(1 + 2 / 3) / 2])          # ranks 0, 2


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="all query identities"):
        evaluate_distmat(np.zeros((1, 3), np.float32), [5], [1, 2, 3], [0], [0, 0, 0])
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_distmat(np.array([[np.nan, 0.1]], np.float32), [1], [1, 2], [0], [1, 1])
    with pytest.raises(ValueError, match="unknown retrieval protocol"):
        evaluate_distmat(np.zeros((1, 2), np.float32), [1], [1, 2], [0], [1, 1], protocol="duke")
    with pytest.raises(ValueError, match="camids are required"):
        evaluate_distmat(np.zeros((1, 2), np.float32), [1], [1, 2], None, None)
    with pytest.raises(ValueError, match="g_pids has 1 entries"):
        evaluate_distmat(np.zeros((1, 2), np.float32), [1], [1], [0], [1, 1])
