"""Invisibility-map metrics on cases worked out by hand, and the color-only baselines."""

from __future__ import annotations

import numpy as np
import pytest

from invismap.invisibility.baselines import darkness_map, local_contrast_map, luminance
from invismap.invisibility.metrics import (
    ScoreHistogram,
    auroc_from_counts,
    coverage_flagged,
    distribution_overlap,
    gaussian_fit,
    object_pixel_mask,
)

# ---------------------------------------------------------------- object_pixel_mask


def test_object_pixel_mask_pixel_centres_and_union():
    m = object_pixel_mask(np.array([[1, 0, 3, 2], [2, 1, 4, 3]]), 3, 5)
    expected = np.array([[0, 1, 1, 0, 0],
                         [0, 1, 1, 1, 0],
                         [0, 0, 1, 1, 0]], bool)
    np.testing.assert_array_equal(m, expected)


def test_object_pixel_mask_accepts_class_column_clips_and_keeps_thin_boxes():
    boxes = np.array([[2, -5, -5, 1, 1], [0, 3.2, 0.1, 3.4, 0.3]])  # [cls, x1, y1, x2, y2]
    m = object_pixel_mask(boxes, 2, 4)
    np.testing.assert_array_equal(m, np.array([[1, 0, 0, 1], [0, 0, 0, 0]], bool))
    assert not object_pixel_mask(np.zeros((0, 4)), 2, 2).any()
    assert not object_pixel_mask(np.array([[3, 3, 1, 1]]), 4, 4).any()  # x2 < x1: nothing
    with pytest.raises(ValueError):
        object_pixel_mask(np.zeros((2, 3)), 4, 4)


# ---------------------------------------------------------------- per-image coverage / flagged


def test_coverage_flagged_by_hand():
    score = np.array([[0.0, 0.2, 0.4], [0.6, 0.8, 1.0]])
    mask = np.array([[0, 0, 0], [1, 1, 0]], bool)
    cov, flg = coverage_flagged(score, mask, [0.0, 0.5, 0.7, 0.9, 1.5])
    np.testing.assert_allclose(cov, [1.0, 1.0, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(flg, [1.0, 3 / 6, 2 / 6, 1 / 6, 0.0])
    cov, flg = coverage_flagged(score, np.zeros_like(mask), [0.5])
    assert np.isnan(cov[0]) and flg[0] == 0.5
    with pytest.raises(ValueError):
        coverage_flagged(score, mask[:1], [0.5])


def test_histogram_agrees_with_exact_per_image_values_on_the_grid():
    rng = np.random.default_rng(0)
    score = rng.random((40, 50)).astype(np.float32)
    mask = rng.random((40, 50)) < 0.2
    h = ScoreHistogram().add(score, mask)
    for tau in (0.0, 0.1, 0.35, 0.5, 0.999, 1.0):
        cov, flg = coverage_flagged(score, mask, [tau])
        assert h.coverage(tau) == pytest.approx(cov[0], abs=1e-12)
        assert h.flagged(tau) == pytest.approx(flg[0], abs=1e-12)


def test_float32_score_at_threshold_counts_as_reaching_it():
    h = ScoreHistogram().add(np.full((1, 1), 0.35, np.float32), np.ones((1, 1), bool))
    assert h.coverage(0.35) == 1.0 and h.flagged(0.35) == 1.0
    assert h.flagged(0.351) == 0.0


# ---------------------------------------------------------------- pooled histogram summaries


def _perfect_and_inverted(p: float = 0.001, n: int = 100_000):
    """Object pixels are the first ``p * n`` pixels; perfect map 1 on them, 0 elsewhere."""
    mask = np.zeros((1, n), bool)
    mask[0, :int(p * n)] = True
    return mask.astype(np.float64), 1.0 - mask, mask


def test_perfect_map():
    perfect, _, mask = _perfect_and_inverted()
    h = ScoreHistogram().add(perfect, mask)
    assert h.auroc() == 1.0
    assert h.coverage(0.35) == 1.0 and h.flagged(0.35) == pytest.approx(0.001)
    assert h.coverage_at_flagged(0.359) == 1.0
    # it has to flag the 0.1% object pixels first: area = 1 - p / (2 * 0.30)
    assert h.normalised_area(0.30) == pytest.approx(1 - 0.001 / 0.6)
    assert h.normalised_area(0.30) > 0.998


def test_inverted_map():
    _, inverted, mask = _perfect_and_inverted()
    h = ScoreHistogram().add(inverted, mask)
    assert h.auroc() == 0.0
    assert h.coverage(0.35) == 0.0
    assert h.normalised_area(0.30) == 0.0
    assert h.coverage_at_flagged(0.359) == 0.0


def test_random_map_sits_on_the_diagonal():
    rng = np.random.default_rng(1)
    h = ScoreHistogram()
    for _ in range(4):  # pooled over several images
        h.add(rng.random((300, 400)), rng.random((300, 400)) < 0.1)
    assert h.normalised_area(0.30) == pytest.approx(0.15, abs=0.005)
    assert h.auroc() == pytest.approx(0.5, abs=0.01)
    assert h.coverage_at_flagged(0.359) == pytest.approx(0.359, abs=0.01)


def test_constant_map_is_one_tie():
    """All pixels in one bin: the curve is the straight diagonal and AUROC is exactly 0.5."""
    score = np.full((10, 10), 0.7)
    mask = np.zeros((10, 10), bool)
    mask[:3] = True
    h = ScoreHistogram().add(score, mask)
    assert h.auroc() == 0.5
    assert h.normalised_area(0.30) == pytest.approx(0.15)
    assert h.coverage_at_flagged(0.25) == pytest.approx(0.25)


def test_auroc_by_hand_with_ties():
    # positives 0.8, 0.5; negatives 0.5, 0.2 -> pairs: (0.8>0.5)=1, (0.8>0.2)=1, (0.5=0.5)=0.5, (0.5>0.2)=1
    score = np.array([[0.8, 0.5, 0.5, 0.2]])
    mask = np.array([[1, 1, 0, 0]], bool)
    assert ScoreHistogram().add(score, mask).auroc() == pytest.approx(3.5 / 4)
    assert auroc_from_counts(np.array([0, 1, 1]), np.array([1, 1, 0])) == pytest.approx(3.5 / 4)
    assert auroc_from_counts(np.array([1, 0]), np.array([0, 1])) == 0.0
    assert np.isnan(auroc_from_counts(np.array([0, 0]), np.array([0, 1])))


def test_curve_shape_and_ends():
    score = np.array([[0.1, 0.9]])
    h = ScoreHistogram(bins=11).add(score, np.array([[False, True]]))
    taus, f, c = h.curve()
    assert taus.shape == f.shape == c.shape == (12,)
    assert (f[0], c[0]) == (0.0, 0.0) and (f[-1], c[-1]) == (1.0, 1.0)
    assert np.all(np.diff(f) >= 0) and np.all(np.diff(c) >= 0) and np.all(np.diff(taus) <= 0)
    # coverage jumps to 1 once half the pixels (the 0.9 one) are flagged
    assert h.coverage_at_flagged(0.5) == 1.0 and h.coverage_at_flagged(0.25) == 0.5
    np.testing.assert_allclose(h.coverage_at_flagged(np.array([0.0, 0.25, 0.5, 1.0])), [0, 0.5, 1, 1])
    with pytest.raises(ValueError):
        h.coverage_at_flagged(1.5)


def test_empty_objects_and_merge():
    h = ScoreHistogram().add(np.full((2, 2), 0.5))
    assert np.isnan(h.coverage(0.5)) and np.isnan(h.auroc()) and np.isnan(h.normalised_area())
    assert h.flagged(0.5) == 1.0
    h2 = ScoreHistogram().add(np.zeros((2, 2)), np.ones((2, 2), bool))
    h.merge(h2)
    assert h.n_pixels == 8 and h.n_object_pixels == 4 and h.auroc() == 0.0
    with pytest.raises(ValueError):
        h.merge(ScoreHistogram(bins=11))
    with pytest.raises(ValueError):
        ScoreHistogram().curve()
    with pytest.raises(ValueError):
        ScoreHistogram().add(np.array([[np.nan]]))


def test_moments_and_coarse_histogram():
    score = np.array([[0.0, 0.25, 0.5, 1.0]])
    h = ScoreHistogram().add(score)
    assert h.mean() == pytest.approx(0.4375)
    assert h.std() == pytest.approx(np.std(score))
    counts = h.histogram(4)
    np.testing.assert_array_equal(counts, [1, 1, 1, 1])  # [0,.25) [.25,.5) [.5,.75) [.75,1]
    np.testing.assert_array_equal(ScoreHistogram().add(np.array([[0.2, 0.7, 0.9, 1.0]])).histogram(2), [1, 3])
    with pytest.raises(ValueError):
        h.histogram(7)


# ---------------------------------------------------------------- distributions


def test_gaussian_fit_and_overlap():
    assert gaussian_fit(np.array([1.0, 3.0, np.nan])) == (2.0, 1.0)
    with pytest.raises(ValueError):
        gaussian_fit(np.array([np.nan]))
    same = distribution_overlap(np.array([1, 2, 3]), np.array([2, 4, 6]))
    assert same["overlap"] == pytest.approx(1.0) and same["bhattacharyya"] == pytest.approx(1.0)
    apart = distribution_overlap(np.array([1, 0]), np.array([0, 1]))
    assert apart == {"overlap": 0.0, "bhattacharyya": 0.0}
    half = distribution_overlap(np.array([1, 1, 0]), np.array([0, 1, 1]))
    assert half["overlap"] == pytest.approx(0.5) and half["bhattacharyya"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        distribution_overlap(np.array([1, 1]), np.array([1, 1, 1]))


# ---------------------------------------------------------------- baselines


@pytest.mark.parametrize("fn", [darkness_map, local_contrast_map])
@pytest.mark.parametrize("value", [0, 128, 255])
def test_baselines_on_constant_images_are_finite_and_in_range(fn, value):
    out = fn(np.full((48, 64, 3), value, np.uint8))
    assert out.shape == (48, 64) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_baseline_values_by_hand():
    black, white = np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8)
    np.testing.assert_allclose(darkness_map(black), 1.0)
    np.testing.assert_allclose(darkness_map(white), 0.0, atol=1e-6)
    np.testing.assert_allclose(local_contrast_map(black), 1.0)  # flat: nothing stands out
    np.testing.assert_allclose(local_contrast_map(white), 1.0)
    checker = np.indices((64, 64)).sum(0) % 2 * 255  # maximal local contrast (std 0.5)
    checker = np.repeat(checker.astype(np.uint8)[:, :, None], 3, axis=2)
    assert local_contrast_map(checker).max() == 0.0
    assert darkness_map(checker)[8:-8, 8:-8] == pytest.approx(0.5, abs=0.01)  # interior: mean gray


def test_baselines_follow_the_cue_and_reject_bad_input():
    img = np.zeros((60, 200, 3), np.uint8)
    img[:, 100:] = 200
    d = darkness_map(img)
    assert d[:, :20].mean() > 0.95 and d[:, -20:].mean() < 0.25
    c = local_contrast_map(img)
    assert c[:, 100].mean() < c[:, 10].mean()  # the edge has contrast, flat areas do not
    assert luminance(img)[0, -1] == pytest.approx(200 / 255, abs=1e-6)
    with pytest.raises(ValueError):
        darkness_map(img.astype(np.float32))
    with pytest.raises(ValueError):
        local_contrast_map(np.zeros((4, 4, 4), np.uint8))


def test_bootstrap_resamples_within_groups_and_is_seeded():
    from invismap.invisibility.bootstrap import estimate, interval, resample_weights

    groups = [np.array([0, 2, 4]), np.array([1, 3])]
    w = resample_weights(groups, n_boot=300, seed=3)
    assert w.shape == (300, 5)
    np.testing.assert_array_equal(w[:, groups[0]].sum(1), 3)  # each group keeps its size ...
    np.testing.assert_array_equal(w[:, groups[1]].sum(1), 2)  # ... so day/night balance never changes
    np.testing.assert_array_equal(w, resample_weights(groups, n_boot=300, seed=3))
    assert not np.array_equal(w, resample_weights(groups, n_boot=300, seed=4))
    assert 0.9 < w.mean() < 1.1
    assert np.isnan(interval(np.array([np.nan, np.nan, 1.0]))).all()  # too few finite replicates
    lo, hi = interval(np.arange(1001.0))
    assert (lo, hi) == (pytest.approx(25.0), pytest.approx(975.0))
    assert estimate(float("nan"), np.arange(10.0))["value"] is None
    with pytest.raises(ValueError):
        resample_weights(groups, n_boot=0)


def test_batched_auroc_and_coverage_match_the_histogram():
    from invismap.invisibility.metrics import coverage_at_flagged_from_counts

    rng = np.random.default_rng(0)
    hists = []
    for _ in range(3):
        score = rng.random((20, 30)).astype(np.float32)
        mask = rng.random((20, 30)) < 0.2
        hists.append(ScoreHistogram().add(score, mask))
    all_c = np.stack([h.all_counts for h in hists])
    obj_c = np.stack([h.obj_counts for h in hists])
    np.testing.assert_allclose(auroc_from_counts(obj_c, all_c - obj_c), [h.auroc() for h in hists])
    cov = coverage_at_flagged_from_counts(all_c, obj_c, np.array([0.1, 0.359]))
    np.testing.assert_allclose(cov, [h.coverage_at_flagged(np.array([0.1, 0.359])) for h in hists])
    assert np.isnan(coverage_at_flagged_from_counts(all_c[0], np.zeros_like(all_c[0]), 0.5))
