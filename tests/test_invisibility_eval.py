"""Evaluation of invisibility maps on real MSRS pairs, object-set matching by hand, and the figures."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from invismap.data.dataset import load_boxes
from invismap.data.manifest import Manifest, Sample
from invismap.detector.base import Detections, Detector
from invismap.errors import InvismapError
from invismap.invisibility.baselines import darkness_map, local_contrast_map
from invismap.invisibility.evaluate import (
    CLASS_FOLD,
    check_score_map,
    color_map_source,
    compare_sources,
    detected_mask,
    evaluate_maps,
    object_sets,
    teacher_detections,
)
from invismap.invisibility.metrics import object_pixel_mask
from invismap.invisibility.plots import (
    curves_from_results,
    plot_coverage_curves,
    plot_intervals,
    plot_score_histograms,
)
from invismap.invisibility.references import oracle_source, prior_source, random_source
from invismap.invisibility.targets import PRIOR_FILE, load_prior, mean_target, save_prior
from invismap.io import write_json

NAMES = ("00004N", "00003N", "00001D", "00002D")  # two night, two day pairs with labels in both modalities


@pytest.fixture(scope="module")
def pairs(msrs_dir: Path) -> Manifest:
    """Four MSRS pairs read straight from the asset folder (MSRS class ids are COCO's for 0..2)."""
    samples = [Sample(n, msrs_dir / "vi" / f"{n}.png", msrs_dir / "ir" / f"{n}.png",
                      "night" if n.endswith("N") else "day", "test", None,
                      msrs_dir / "labels" / "visible" / f"{n}.txt",
                      msrs_dir / "labels" / "infrared" / f"{n}.txt")
               for n in NAMES]
    return Manifest(samples, msrs_dir)


def _labels_as_detections(m: Manifest) -> dict[str, Detections]:
    """A teacher that detects exactly the color labels."""
    out = {}
    for s in m:
        c, _ = load_boxes(s, 640, 480)
        out[s.name] = Detections(c[:, 1:], np.ones(len(c), np.float32), c[:, 0].astype(np.int64))
    return out


# ---------------------------------------------------------------- matching by hand


def _dets(boxes, classes, scores=None) -> Detections:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return Detections(boxes, np.asarray(scores if scores is not None else [0.9] * len(boxes), np.float32),
                      np.asarray(classes, np.int64))


def test_detected_mask_by_hand():
    thermal = np.array([[2, 0, 0, 10, 10], [0, 20, 20, 30, 40], [2, 50, 50, 60, 60]], np.float32)
    dets = _dets([[0, 0, 10, 11], [20, 20, 30, 40], [100, 100, 110, 110]], [7, 2, 2])
    # box 0: truck on a labelled car (folded to car); box 1: right place, wrong class; box 2: nothing there
    np.testing.assert_array_equal(detected_mask(thermal, dets, class_fold=CLASS_FOLD), [True, False, False])
    np.testing.assert_array_equal(detected_mask(thermal, dets, class_fold=None), [False, False, False])
    np.testing.assert_array_equal(detected_mask(thermal, dets, match="any_class"), [True, True, False])
    # a detection under the confidence threshold does not count
    weak = _dets([[0, 0, 10, 10]], [2], [0.1])
    assert not detected_mask(thermal, weak, conf=0.25)[0] and detected_mask(thermal, weak, conf=0.05)[0]
    # IoU >= 0.5 matches: a 10x10 label inside a 10x20 detection has IoU 0.5 (hit), inside 10x21 under it
    assert detected_mask(thermal[:1], _dets([[0, 0, 10, 20]], [2]))[0]
    assert not detected_mask(thermal[:1], _dets([[0, 0, 10, 21]], [2]))[0]
    assert detected_mask(np.zeros((0, 5)), dets).shape == (0,)
    with pytest.raises(ValueError):
        detected_mask(thermal, dets, match="nearby")


def test_object_sets_partition_the_thermal_objects():
    thermal = np.array([[0, 0, 0, 10, 10], [0, 20, 20, 30, 30], [2, 40, 40, 50, 50]], np.float32)
    color = np.array([[0, 0, 0, 10, 10]], np.float32)  # only the first is visible to an annotator
    dets = _dets([[40, 40, 50, 50]], [2])  # the teacher finds only the car
    sets = object_sets(thermal, color, dets)
    assert len(sets["all"]) == 3
    np.testing.assert_array_equal(sets["detected"][:, 0], [2])
    np.testing.assert_array_equal(sets["missed"][:, 1], [0, 20])
    np.testing.assert_array_equal(sets["invisible"][:, 1], [20, 40])
    np.testing.assert_array_equal(sets["visible"][:, 1], [0])
    assert set(object_sets(thermal, None, None)) == {"all"}


def test_check_score_map():
    assert check_score_map(np.full((2, 3), 1 + 1e-7), 2, 3).max() == 1.0
    assert check_score_map(torch.zeros(2, 3), 2, 3).dtype == np.float32
    for bad in (np.zeros((3, 2)), np.full((2, 3), 1.5), np.full((2, 3), np.nan)):
        with pytest.raises(InvismapError):
            check_score_map(bad, 2, 3, "x")


# ---------------------------------------------------------------- on real pairs


def test_evaluate_darkness_on_real_pairs(pairs, tmp_path):
    res = evaluate_maps(pairs, color_map_source(darkness_map), _labels_as_detections(pairs), progress=False)
    res = json.loads(json.dumps(res, allow_nan=False))  # strictly JSON-serialisable
    assert set(res["conditions"]) == {"day", "night"}
    assert 0 <= res["day_vs_night"]["overlap"] <= 1 and 0 <= res["day_vs_night"]["bhattacharyya"] <= 1
    for cond, r in res["conditions"].items():
        assert r["pairs"] == 2
        assert 0 <= r["scores"]["mean"] <= 1 and 0 <= r["scores"]["std"] <= 0.5
        assert sum(r["scores"]["histogram"]["counts"]) == 2 * 640 * 480
        assert set(r["sets"]) == {"missed", "detected", "invisible", "visible", "all"}
        assert r["objects"]["missed"] + r["objects"]["detected"] == r["objects"]["all"] > 0
        assert r["objects"]["invisible"] + r["objects"]["visible"] == r["objects"]["all"]
        sep = r["separation"]
        assert sep["missed_vs_detected_auroc"] == sep["invisible_vs_visible_auroc"]
        assert 0 <= sep["missed_vs_detected_auroc"] <= 1
        # a teacher that finds exactly the color labels misses exactly the thermal-only objects
        assert r["sets"]["missed"] == r["sets"]["invisible"]
        for s in r["sets"].values():
            for key in ("coverage_at_tau", "flagged_at_tau", "coverage_at_matched_flagged", "normalised_area",
                        "auroc", "object_pixel_share"):
                assert 0 <= s[key] <= 1, (cond, key)
            assert len(s["curve"]["flagged"]) == len(s["curve"]["coverage"])
            assert s["curve"]["coverage"][0] == 0 and s["curve"]["coverage"][-1] == pytest.approx(1)
    # night pairs are darker: darkness scores higher at night
    assert res["conditions"]["night"]["scores"]["mean"] > res["conditions"]["day"]["scores"]["mean"]
    write_json(tmp_path / "res.json", res)
    assert json.loads((tmp_path / "res.json").read_text())["settings"]["map_source"] == "darkness_map"


def test_evaluate_without_detections_and_errors(pairs):
    night = pairs.select(condition="night")
    res = evaluate_maps(night, color_map_source(local_contrast_map), None, conditions=("night",),
                        progress=False)
    assert set(res["conditions"]) == {"night"} and "day_vs_night" not in res
    assert set(res["conditions"]["night"]["sets"]) == {"invisible", "visible", "all"}
    assert set(res["conditions"]["night"]["separation"]) == {"invisible_vs_visible_auroc",
                                                             "invisible_vs_visible_object_auroc"}
    with pytest.raises(InvismapError, match="no teacher detections"):
        evaluate_maps(pairs, color_map_source(darkness_map), {}, progress=False)
    with pytest.raises(InvismapError, match="shape"):
        evaluate_maps(night, lambda s, rgb, thr: np.zeros((10, 10)), None, progress=False)
    with pytest.raises(InvismapError, match="no pairs"):
        evaluate_maps(pairs, color_map_source(darkness_map), None, conditions=("fog",), progress=False)


class _OneBoxDetector(Detector):
    """Always predicts one car at canvas box (100, 100)-(140, 180), objectness 0.9, car prob 0.9."""

    strides = (8, 16, 32)

    def __init__(self):
        super().__init__()
        self.names = ["person", "bicycle", "car"]
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        p = torch.tensor([120.0, 140.0, 40.0, 80.0, 0.9, 0.01, 0.01, 0.9])
        return p.expand(images.shape[0], 1, 8).clone()


def test_teacher_detections_plumbing(pairs):
    dets = teacher_detections(pairs, _OneBoxDetector(), batch_size=3, progress=False)
    assert list(dets) == list(NAMES)
    for d in dets.values():  # MSRS is 640x480, so the canvas is the image: boxes come back unchanged
        np.testing.assert_allclose(d.boxes, [[100, 100, 140, 180]], atol=1e-4)
        np.testing.assert_array_equal(d.classes, [2])
        assert d.scores[0] == pytest.approx(0.81)


# ---------------------------------------------------------------- figures


def test_plots_are_written(pairs, tmp_path):
    dets = _labels_as_detections(pairs)
    results = compare_sources(pairs, {"darkness": color_map_source(darkness_map),
                                      "contrast": color_map_source(local_contrast_map)}, dets, progress=False)
    curves = curves_from_results(results, "night", "missed")
    assert len(curves) == 2 and all(len(f) == len(c) for f, c in curves.values())
    p = plot_coverage_curves(curves, tmp_path / "figs" / "curves.png", title="night, missed", max_flagged=0.3)
    scores = {c: r["scores"] for c, r in results["darkness"]["conditions"].items()}
    q = plot_score_histograms(scores, tmp_path / "figs" / "hist.png", log_y=True)
    for f in (p, q):
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "figs").glob(".*.tmp"))  # atomic writes leave no temp files
    with pytest.raises(ValueError):
        plot_score_histograms({}, tmp_path / "empty.png")


def test_interval_plot_keys_the_conditions_when_the_first_map_has_no_value(tmp_path):
    """missed vs detected is n/a when the color detector finds nothing; the legend must not depend on it."""
    def result(value):
        entry = {"value": value, "lo": value and value - 0.1, "hi": value and value + 0.1}
        return {"conditions": {c: {"metrics": {"missed_vs_detected": entry}} for c in ("day", "night")}}

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns when a legend has no entries
        path = plot_intervals({"predictor": result(None), "darkness": result(0.7)}, tmp_path / "iv.png",
                              metrics={"missed_vs_detected": "missed vs detected"})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- known answers, intervals, references


def _constant(value: float):
    def source(sample, rgb, thermal):
        return np.full(rgb.shape[:2], value, np.float32)

    return source


def test_missed_object_oracle_scores_perfectly(pairs):
    """The oracle of the missed boxes covers every missed pixel at its own flagged share and ranks every
    missed object above every detected one; only pixels shared by a missed and a detected box tie."""
    dets = _labels_as_detections(pairs)
    res = evaluate_maps(pairs, oracle_source(dets, "missed"), dets, n_boot=50, progress=False)
    for cond, r in res["conditions"].items():
        missed = r["sets"]["missed"]
        assert missed["objects"] > 0 and r["sets"]["detected"]["objects"] > 0, cond
        assert missed["coverage_at_tau"] == 1.0  # tau = 0.35 flags exactly the oracle's pixels
        assert missed["auroc"] == 1.0
        assert r["metrics"]["missed_vs_detected_object"]["value"] == 1.0
        assert r["metrics"]["frame_auroc"]["value"] in (1.0, None)  # None: every frame holds a missed object
        # pixel level: detected pixels inside a missed box tie (0.5), all others rank below
        shared = total = 0
        for s in pairs.select(condition=cond):
            _, t = load_boxes(s, 640, 480)
            sets = object_sets(t, None, dets[s.name])
            m = object_pixel_mask(sets["missed"][:, 1:], 480, 640)
            d = object_pixel_mask(sets["detected"][:, 1:], 480, 640)
            shared, total = shared + (m & d).sum(), total + d.sum()
        assert r["separation"]["missed_vs_detected_auroc"] == pytest.approx(1 - 0.5 * shared / total,
                                                                            abs=1e-9)


def test_constant_map_is_chance_everywhere(pairs):
    dets = _labels_as_detections(pairs)
    res = evaluate_maps(pairs, _constant(0.4), dets, n_boot=50, progress=False)
    for cond, r in res["conditions"].items():
        m = r["metrics"]
        for key in ("pixel_auroc", "missed_vs_detected", "invisible_vs_visible", "missed_vs_detected_object",
                    "invisible_vs_visible_object"):
            assert m[key] == {"value": 0.5, "lo": 0.5, "hi": 0.5}, (cond, key)
        assert m["coverage_35.9"]["value"] == pytest.approx(0.359)  # coverage = flagged share
        assert m["coverage_25"]["value"] == pytest.approx(0.25)
        assert m["frame_auroc"]["value"] in (0.5, None)  # None: no frame without a missed object drawn
        assert m["frame_spearman"]["value"] is None  # a constant frame score has no rank
    assert res["day_vs_night"]["overlap"] == 1.0


def test_random_map_and_object_oracle_references(pairs):
    dets = _labels_as_detections(pairs)
    res = compare_sources(pairs, {"random": random_source(seed=1), "oracle": oracle_source()}, dets,
                          n_boot=50, progress=False)
    for r in res["random"]["conditions"].values():
        assert r["metrics"]["pixel_auroc"]["value"] == pytest.approx(0.5, abs=0.01)
        assert r["metrics"]["coverage_35.9"]["value"] == pytest.approx(0.359, abs=0.02)
    for r in res["oracle"]["conditions"].values():  # finds every object, cannot tell which ones are missed
        assert r["metrics"]["coverage_35.9"]["value"] == 1.0
        assert r["metrics"]["missed_vs_detected"]["value"] == 0.5
    # the same name and seed give the same noise; another seed other noise
    s = pairs.samples[0]
    rgb = np.zeros((8, 8, 3), np.uint8)
    np.testing.assert_array_equal(random_source(1)(s, rgb, None), random_source(1)(s, rgb, None))
    assert not np.array_equal(random_source(1)(s, rgb, None), random_source(2)(s, rgb, None))


def test_intervals_and_paired_margins(pairs):
    dets = _labels_as_detections(pairs)
    res = compare_sources(pairs, {"darkness": color_map_source(darkness_map), "prior": _constant(0.3),
                                  "same": color_map_source(darkness_map)}, dets, references=("prior", "same"),
                          n_boot=200, progress=False)
    res = json.loads(json.dumps(res, allow_nan=False))
    night = res["darkness"]["conditions"]["night"]["metrics"]
    for key, est in night.items():
        if est["value"] is not None and est["lo"] is not None:
            assert est["lo"] <= est["hi"], key
    # a map against itself: every replicate's margin is 0
    same = res["darkness"]["margins"]["same"]["night"]["pixel_auroc"]
    assert same == {"value": 0.0, "lo": 0.0, "hi": 0.0}
    # the margin's point estimate is the difference of the two maps' values
    margin = res["darkness"]["margins"]["prior"]["night"]["pixel_auroc"]
    assert margin["value"] == pytest.approx(night["pixel_auroc"]["value"] - 0.5, abs=2e-4)
    assert "prior" not in res["prior"].get("margins", {})  # no margin of a reference over itself
    assert set(res["darkness"]["margins"]["prior"]) == {"day", "night", "pooled"}
    assert res["darkness"]["pooled"]["pairs"] == len(pairs)


def test_fixed_prior_from_cached_targets(pairs, tmp_path):
    from invismap.invisibility.predictor import save_target

    for i, s in enumerate(pairs):
        save_target(tmp_path, s.name, np.full((480, 640), i / 4, np.float32))
    prior = mean_target(pairs, tmp_path, size=640, progress=False)
    assert prior.shape == (480, 640)
    np.testing.assert_allclose(prior, (0 + 0.25 + 0.5 + 0.75) / 4, atol=1e-3)  # float16 targets
    save_prior(tmp_path / PRIOR_FILE, prior)
    again = prior_source(load_prior(tmp_path))(pairs.samples[0], np.zeros((240, 320, 3), np.uint8), None)
    assert again.shape == (240, 320) and np.allclose(again, prior.mean(), atol=1e-3)
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(InvismapError, match=r"bad.npy"):
        load_prior(tmp_path / "bad.npy")
    with pytest.raises(InvismapError, match="score-pairs"):
        load_prior(tmp_path / "nowhere")
