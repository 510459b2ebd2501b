"""Numerics on degenerate images: black, white and constant frames never give NaN or inf.

Covers the distillation losses (every variant, through the real yolov5n teacher and its thermal student, with
gradients), the pixel invisibility score, the color-only predictor (its loss, gradients and maps), the
baseline maps and the evaluation metrics; and the training loop's guard: a non-finite loss is skipped with a
warning and counted, and repeated ones stop the run with a clear message.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from invismap.engine.checkpoint import load_checkpoint
from invismap.engine.loop import Task, TrainConfig, fit
from invismap.errors import InvismapError

SIZE = 64
# (color value, thermal value) in 0..1: black, white, mid gray, and the two mismatched extremes
FRAMES = {"black": (0.0, 0.0), "white": (1.0, 1.0), "gray": (0.5, 0.5), "black_white": (0.0, 1.0),
          "white_black": (1.0, 0.0)}


def frames(name: str, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    c, t = FRAMES[name]
    return torch.full((batch, 3, SIZE, SIZE), c), torch.full((batch, 1, SIZE, SIZE), t)


def all_finite(tensors) -> bool:
    return all(torch.isfinite(t).all() for t in tensors if t is not None)


@pytest.fixture(scope="module")
def teacher_student(weights_dir):
    from invismap.detector.zoo import load_detector
    from invismap.distill.student import ThermalStudent

    teacher = load_detector("yolov5n")
    return teacher, ThermalStudent(teacher)


@pytest.mark.parametrize("loss", ["mid", "head", "mid+head"])
@pytest.mark.parametrize("name", list(FRAMES))
def test_distillation_losses_and_gradients_are_finite(teacher_student, loss, name):
    from invismap.distill.task import DistillTask

    teacher, student = teacher_student
    task = DistillTask(teacher, student, loss).train()
    rgb, thermal = frames(name)
    out = task.training_step({"rgb": rgb, "thermal": thermal})
    assert all_finite(out.values()), out
    student.zero_grad(set_to_none=True)
    out["loss/main"].backward()
    assert all_finite(p.grad for p in student.parameters())


@pytest.mark.parametrize("offsets", [None, (0.5, 0.5, 0.5)])
@pytest.mark.parametrize("name", list(FRAMES))
def test_invisibility_score_is_finite_and_in_range(teacher_student, name, offsets):
    from invismap.invisibility.pair import PairScorer

    teacher, student = teacher_student
    scorer = PairScorer(teacher, student, thresholds=(2.0, 2.0, 2.0), size=SIZE, offsets=offsets)
    f = scorer.score_canvas(*frames(name))
    assert f.shape == (2, SIZE, SIZE) and torch.isfinite(f).all() and f.min() >= 0 and f.max() <= 1


def test_score_of_identical_features_is_zero_not_nan():
    from invismap.invisibility.score import invisibility_score

    feats = [torch.zeros(1, 4, 8, 8), torch.ones(1, 8, 4, 4), torch.full((1, 16, 2, 2), 7.0)]
    f = invisibility_score(feats, [x.clone() for x in feats], (1.0, 1.0, 1.0), (32, 32))
    assert torch.equal(f, torch.zeros(1, 32, 32))


@pytest.mark.parametrize("loss", ["bce", "mse"])
@pytest.mark.parametrize("target_value", [0.0, 1.0, 0.5])
@pytest.mark.parametrize("name", ["black", "white", "gray"])
def test_predictor_loss_gradients_and_maps_are_finite(name, target_value, loss):
    from invismap.invisibility.predictor import PredictorTask

    task = PredictorTask(loss=loss, input_size=SIZE).train()
    rgb, _ = frames(name)
    target = torch.full((2, 1, SIZE, SIZE), target_value)
    for valid in (torch.ones_like(target), torch.zeros_like(target)):  # all padding: loss 0, not 0/0
        out = task.training_step({"rgb": rgb, "target": target, "valid": valid})
        assert all_finite(out.values()), out
        task.net.zero_grad(set_to_none=True)
        out["loss/main"].backward()
        assert all_finite(p.grad for p in task.net.parameters())
    task.net.eval()
    heat = task.net.predict(rgb)
    assert torch.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1


@pytest.mark.parametrize("value", [0, 255, 114])
def test_baseline_maps_and_predicted_maps_of_constant_images(value):
    from invismap.invisibility.baselines import darkness_map, local_contrast_map
    from invismap.invisibility.predict import predict_image
    from invismap.invisibility.unet import InvisibilityUNet

    rgb = np.full((48, 64, 3), value, np.uint8)
    predicted = predict_image(InvisibilityUNet().eval(), rgb, SIZE)
    for m in (darkness_map(rgb), local_contrast_map(rgb), predicted):
        assert m.shape == (48, 64) and np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1
    assert local_contrast_map(rgb).min() == 1.0  # a flat image has no contrast anywhere


@pytest.mark.parametrize("value", [0.0, 1.0, 0.35])
def test_metrics_of_constant_maps(value):
    from invismap.invisibility.metrics import ScoreHistogram, coverage_flagged, object_pixel_mask

    score = np.full((48, 64), value, np.float32)
    mask = object_pixel_mask(np.array([[10, 10, 30, 40]]), 48, 64)
    cov, flag = coverage_flagged(score, mask, [0.0, 0.35, 1.0])
    assert np.isfinite(cov).all() and np.isfinite(flag).all()
    h = ScoreHistogram().add(score, mask).add(np.zeros((48, 64), np.float32), None)
    for v in (h.coverage(0.35), h.flagged(0.35), h.auroc(), h.normalised_area(), h.mean(), h.std(),
              h.coverage_at_flagged(0.359)):
        assert np.isfinite(v), v
    assert 0 <= h.auroc() <= 1


# --------------------------------------------------------------------------------------------- NaN guard

class _NanAt(Task):
    """A toy regression whose loss is NaN at chosen steps (counted by calls)."""

    kind = "toy"

    def __init__(self, nan_calls):
        super().__init__()
        self.net, self.nan_calls, self.calls = nn.Linear(2, 1), set(nan_calls), 0

    def training_step(self, batch):
        self.calls += 1
        loss = (self.net(batch) ** 2).mean()
        return {"loss/main": loss * float("nan") if self.calls in self.nan_calls else loss}


class _Points(torch.utils.data.Dataset):
    """16 random points; index i + epoch * n is allowed (the loop's sampler convention)."""

    def __init__(self):
        self.x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i % len(self.x)]


def _cfg(**kw) -> TrainConfig:
    base = {"max_steps": 12, "batch_size": 2, "lr": 0.01, "warmup_steps": 1, "ckpt_every": 4, "eval_every": 0,
            "log_every": 4, "max_bad_steps": 3}
    return TrainConfig(**{**base, **kw})


def test_nan_loss_steps_are_warned_counted_and_skipped(tmp_path, caplog):
    data = _Points()
    with caplog.at_level(logging.WARNING, logger="invismap.engine.loop"):
        summary = fit(_NanAt({3, 7, 8}), data, _cfg(), tmp_path, progress=False)
    warnings = [r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage()]
    assert warnings == ["step 2: non-finite loss, step skipped (1 so far)",
                        "step 6: non-finite loss, step skipped (2 so far)",
                        "step 7: non-finite loss, step skipped (3 so far)"]
    assert summary.skipped_steps == 3 and summary.steps == 12
    state = load_checkpoint(tmp_path / "ckpt" / "last.pt", "toy")
    assert state["skipped_steps"] == 3 and all_finite(state["model"].values())


def test_repeated_nan_losses_stop_training_with_a_clear_message(tmp_path):
    with pytest.raises(InvismapError) as e:
        fit(_NanAt(set(range(5, 100))), _Points(), _cfg(), tmp_path, progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert "training stopped: 3 non-finite losses in a row at step 6" in msg
    assert "lower the learning rate" in msg
    assert all_finite(load_checkpoint(tmp_path / "ckpt" / "last.pt", "toy")["model"].values())
