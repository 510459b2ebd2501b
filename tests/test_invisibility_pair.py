"""The pair score: hand-checkable cases of the formula, and scoring real pairs with a teacher and student."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from invismap.detector.zoo import load_detector
from invismap.distill.student import ThermalStudent
from invismap.invisibility.pair import PairScorer
from invismap.invisibility.score import calibrate_thresholds, feature_distance, invisibility_score


def test_score_formula_by_hand():
    t = [torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 1, 1)]
    s = [torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 1, 1)]
    s[0][0, :, 0, 0] = 1.0  # distance 2 at one cell of scale 0
    s[1][0, 0] = 10.0  # distance 10 everywhere at scale 1: saturates
    assert feature_distance(t[0], s[0])[0, 0, 0] == 2.0
    f = invisibility_score(t, s, thresholds=[4.0, 5.0], size=(2, 2))
    # scale 0 upsampled at its own size: min(2/4, 1) = 0.5 at (0,0), 0 elsewhere; scale 1: 1 everywhere
    assert torch.allclose(f[0], torch.tensor([[0.75, 0.5], [0.5, 0.5]]))
    same = invisibility_score(t, t, [4.0, 5.0], (8, 8))
    assert float(same.abs().max()) == 0.0


def test_calibrated_threshold_is_the_percentile():
    d = [torch.arange(1, 101, dtype=torch.float32)]
    assert calibrate_thresholds(d, 50)[0] == pytest.approx(50.5)
    with pytest.raises(ValueError):
        calibrate_thresholds([torch.tensor([float("nan")])])


@pytest.fixture(scope="module")
def teacher(assets):
    import os

    os.environ["INVISMAP_ASSETS"] = str(assets)
    return load_detector("yolov5n")


def test_pair_score_of_real_pairs(teacher, msrs_dir):
    from invismap.io import read_color, read_thermal

    scorer = PairScorer(teacher, ThermalStudent(teacher), thresholds=[4.0, 4.0, 4.0], size=320)
    rgb, thr = read_color(msrs_dir / "vi/00003N.png"), read_thermal(msrs_dir / "ir/00003N.png")
    f = scorer.score(rgb, thr)
    assert f.shape == rgb.shape[:2] and f.dtype == np.float32
    assert np.isfinite(f).all() and f.min() >= 0 and f.max() <= 1 and f.max() > 0.1
    # an undistilled copy shown the same gray image in both modalities agrees with the teacher exactly
    gray = rgb.mean(2).astype(np.uint8)
    g = scorer.score(np.repeat(gray[:, :, None], 3, 2), gray)
    assert g.max() < 1e-3
    for blank in (np.zeros_like(rgb), np.full_like(rgb, 255)):
        b = scorer.score(blank, blank[:, :, 0])
        assert np.isfinite(b).all()
