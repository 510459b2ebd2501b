"""Pair scores for whole images and datasets: teacher(color) vs student(thermal) -> invisibility map.

Example:
    >>> scorer = PairScorer.from_checkpoint("runs/distill/distill/student.pt")  # doctest: +SKIP
    >>> F = scorer.score(rgb, thermal)  # (H, W) float32 in [0, 1], original pixels  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from invismap.data.letterbox import apply_letterbox, letterbox_params, map_to_original
from invismap.detector.base import Detector
from invismap.detector.zoo import load_detector
from invismap.distill.student import ThermalStudent, load_student
from invismap.engine.checkpoint import load_checkpoint
from invismap.errors import file_error
from invismap.invisibility.score import invisibility_score


class PairScorer:
    """Computes the invisibility score F of color/thermal pairs with a teacher and a distilled student.

    Args:
        teacher: the frozen color detector.
        student: the thermal student distilled from it.
        thresholds: t_k per neck scale, fine to coarse (calibrated ones are stored in ``student.pt``).
        size: letterbox size the networks run at.
        offsets: b_k per scale (daytime floor of d_k; see :mod:`invismap.invisibility.score`), or None.
        scales: which neck scales (indices, fine to coarse) the score averages; None = all (the layer
            ablation scores with one scale at a time).
    """

    def __init__(self, teacher: Detector, student: ThermalStudent, thresholds: Sequence[float],
                 size: int = 640, offsets: Sequence[float] | None = None,
                 scales: Sequence[int] | None = None):
        if len(thresholds) != len(teacher.strides):
            raise ValueError(f"{len(thresholds)} thresholds for {len(teacher.strides)} neck scales")
        self.scales = list(range(len(thresholds))) if scales is None else [int(k) for k in scales]
        if not self.scales or any(not 0 <= k < len(thresholds) for k in self.scales):
            raise ValueError(f"scales {scales} must be indices of the {len(thresholds)} neck scales")
        self.teacher, self.student = teacher.eval(), student.eval()
        self.thresholds, self.size = [float(t) for t in thresholds], size
        self.offsets = None if offsets is None else [float(b) for b in offsets]

    @classmethod
    def from_checkpoint(cls, path: str | Path, thresholds: Sequence[float] | None = None,
                        size: int | None = None, offsets: Sequence[float] | None = None,
                        scales: Sequence[int] | None = None) -> PairScorer:
        """Student + its calibrated thresholds (and offsets) from ``student.pt``; the teacher named
        inside it."""
        path = Path(path)
        ckpt = load_checkpoint(path, ("student", "thermal_detector"))
        if thresholds is None and "thresholds" not in ckpt:
            raise file_error(path, "has no calibrated thresholds", "pass thresholds explicitly")
        teacher = load_detector(ckpt.get("teacher", "yolov5n"))
        size = size or int(ckpt.get("config", {}).get("size", 640))
        if offsets is None and thresholds is None:
            offsets = ckpt.get("offsets")
        return cls(teacher, load_student(ckpt, path), thresholds or ckpt["thresholds"], size, offsets, scales)

    @torch.no_grad()
    def score_canvas(self, rgb: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
        """Letterboxed batch ``(B, 3, H, W)`` + ``(B, 1, H, W)`` in 0..1 -> ``(B, H, W)`` F."""
        t = self.teacher.neck_features(rgb)
        s = self.student(thermal)
        k = self.scales
        offsets = None if self.offsets is None else [self.offsets[i] for i in k]
        return invisibility_score([t[i] for i in k], [s[i] for i in k], [self.thresholds[i] for i in k],
                                  rgb.shape[-2:], offsets)

    def score(self, rgb: np.ndarray, thermal: np.ndarray) -> np.ndarray:
        """One pair, RGB ``(H, W, 3)`` and thermal ``(H, W)`` uint8 -> ``(H, W)`` float32 F in original
        pixels."""
        lb = letterbox_params(rgb.shape[1], rgb.shape[0], self.size, stride=max(self.teacher.strides))
        device = next(self.teacher.parameters()).device
        x_rgb = torch.from_numpy(apply_letterbox(rgb, lb).transpose(2, 0, 1).copy()).float().div(255)[None]
        x_thr = torch.from_numpy(apply_letterbox(thermal, lb)).float().div(255)[None, None]
        f = self.score_canvas(x_rgb.to(device), x_thr.to(device))[0].cpu().numpy()
        return map_to_original(f, lb).astype(np.float32)
