"""The paper's pixel invisibility score (Section 3.3, Eq. 1 as intended).

Per neck scale k, ``d_k`` is the per-cell L2 distance over channels between the teacher's features of the
color image and the student's features of the thermal image; the score is

    F = mean_k min(d_k / t_k, 1)                      (each d_k upsampled bilinearly to the input size)

so F is in [0, 1]: 0 where the two modalities agree (the color camera sees what thermal sees), 1 where
every scale disagrees by at least its threshold t_k. The paper's t = (4, 3.5, 3.2) belong to YOLOv3's
feature scale; :func:`calibrate_thresholds` derives t_k from daytime pairs for any teacher.

A distilled student never matches the teacher exactly, so d_k has a floor b_k > 0 even on daytime pairs.
Optional offsets subtract it: ``F = mean_k clip((d_k - b_k) / (t_k - b_k), 0, 1)``; with b_k = 0 (the
default) this is the paper's formula.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

PAPER_THRESHOLDS = (4.0, 3.5, 3.2)  # YOLOv3 layers 79/91/103, coarse to fine in the paper's order


def feature_distance(teacher_feat: torch.Tensor, student_feat: torch.Tensor) -> torch.Tensor:
    """Per-cell L2 distance over channels: ``(B, C, h, w)`` x2 -> ``(B, h, w)``."""
    if teacher_feat.shape != student_feat.shape:
        raise ValueError(f"feature shapes differ: {tuple(teacher_feat.shape)} vs {tuple(student_feat.shape)}")
    return (teacher_feat - student_feat).pow(2).sum(1).sqrt()


def invisibility_score(teacher_feats: Sequence[torch.Tensor], student_feats: Sequence[torch.Tensor],
                       thresholds: Sequence[float], size: tuple[int, int],
                       offsets: Sequence[float] | None = None) -> torch.Tensor:
    """The invisibility map F in [0, 1].

    Args:
        teacher_feats: teacher neck features of the color image, fine to coarse, each ``(B, C_k, h_k, w_k)``.
        student_feats: student neck features of the thermal image, same shapes.
        thresholds: t_k per scale, in the same (fine to coarse) order.
        size: ``(H, W)`` of the network input the map is upsampled to.
        offsets: b_k per scale (the daytime floor of d_k), or None for the paper's b_k = 0.

    Returns:
        ``(B, H, W)`` float tensor in [0, 1].
    """
    if not (len(teacher_feats) == len(student_feats) == len(thresholds)):
        raise ValueError("need one teacher feature, one student feature and one threshold per scale")
    offsets = [0.0] * len(thresholds) if offsets is None else offsets
    if len(offsets) != len(thresholds) or any(b >= t for b, t in zip(offsets, thresholds)):
        raise ValueError(f"need one offset per scale, each below its threshold: {offsets} vs {thresholds}")
    maps = []
    for t, s, thr, b in zip(teacher_feats, student_feats, thresholds, offsets):
        d = (feature_distance(t.float(), s.float()) - float(b)) / (float(thr) - float(b))
        d = F.interpolate(d[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        maps.append(d.clamp(0, 1))  # clamp after upsampling keeps the map in [0, 1]
    return torch.stack(maps).mean(0)


def calibrate_thresholds(distances: Sequence[torch.Tensor], percentile: float = 99.0) -> list[float]:
    """t_k as a high percentile of d_k over daytime pairs (where the color image is trustworthy).

    Args:
        distances: per scale, all d_k values pooled from daytime validation pairs (any shape).
        percentile: which percentile becomes the threshold; at 99, 1% of daytime cells saturate.
    """
    out = []
    for d in distances:
        flat = d.flatten().float()
        if flat.numel() == 0 or not torch.isfinite(flat).all():
            raise ValueError("threshold calibration needs finite distances from at least one pair")
        if flat.numel() > 1_000_000:  # torch.quantile's input limit; a fixed subsample keeps it exact enough
            pick = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]
            flat = flat[pick]
        out.append(max(float(torch.quantile(flat, percentile / 100)), 1e-6))
    return out
