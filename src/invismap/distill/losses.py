"""Distillation losses (the paper's Table 1 variants).

- ``mid``: MSE between student and teacher neck features, averaged over the scales (the paper's best);
- ``head``: MSE between the raw head outputs of student and teacher features, both through the
  teacher's frozen heads (the paper's "Yolo-only");
- ``mid+head``: ``mid + head_weight * head`` (the paper tried 0.05, 0.1 and 1.0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

LOSSES = ("mid", "head", "mid+head")


def feature_mse(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over scales of the per-element MSE; each scale weighs the same whatever its size."""
    return torch.stack([F.mse_loss(s, t) for s, t in zip(student, teacher)]).mean()


def distill_loss(kind: str, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor],
                 heads: Callable[[list[torch.Tensor]], list[torch.Tensor]], head_weight: float = 0.1,
                 teacher_raw: Sequence[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The selected loss plus its parts: ``{'total', 'mid', 'head'}`` (parts not used are absent).

    ``heads`` are the teacher's frozen heads; ``teacher_raw`` may pass precomputed teacher head outputs.
    """
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
    out: dict[str, torch.Tensor] = {}
    if kind in ("mid", "mid+head"):
        out["mid"] = feature_mse(student_feats, teacher_feats)
    if kind in ("head", "mid+head"):
        if teacher_raw is None:
            with torch.no_grad():
                teacher_raw = heads(list(teacher_feats))
        out["head"] = feature_mse(heads(list(student_feats)), teacher_raw)
    if kind == "mid":
        out["total"] = out["mid"]
    elif kind == "head":
        out["total"] = out["head"]
    else:
        out["total"] = out["mid"] + head_weight * out["head"]
    return out
