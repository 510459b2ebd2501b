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

from invismap.registry import Registry


def feature_mse(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over scales of the per-element MSE; each scale weighs the same whatever its size."""
    return torch.stack([F.mse_loss(s, t) for s, t in zip(student, teacher)]).mean()


# name -> loss(student_feats, teacher_feats, head, head_weight) -> {'total', 'mid'?, 'head'?}, where head()
# computes the head term (the teacher's frozen heads on both features) only when a loss asks for it
LOSSES: Registry[Callable[..., dict[str, torch.Tensor]]] = Registry("distillation loss")


@LOSSES.register("mid")
def mid_loss(student, teacher, head, head_weight):
    mid = feature_mse(student, teacher)
    return {"mid": mid, "total": mid}


@LOSSES.register("head")
def head_loss(student, teacher, head, head_weight):
    h = head()
    return {"head": h, "total": h}


@LOSSES.register("mid+head")
def mid_head_loss(student, teacher, head, head_weight):
    mid, h = feature_mse(student, teacher), head()
    return {"mid": mid, "head": h, "total": mid + head_weight * h}


def distill_loss(kind: str, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor],
                 heads: Callable[[list[torch.Tensor]], list[torch.Tensor]], head_weight: float = 0.1,
                 teacher_raw: Sequence[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The loss named ``kind`` plus its parts: ``{'total', 'mid', 'head'}`` (parts not used are absent).

    ``heads`` are the teacher's frozen heads; ``teacher_raw`` may pass precomputed teacher head outputs.
    """
    loss = LOSSES.get(kind)

    def head() -> torch.Tensor:
        raw = teacher_raw
        if raw is None:
            with torch.no_grad():
                raw = heads(list(teacher_feats))
        return feature_mse(heads(list(student_feats)), raw)

    return loss(student_feats, teacher_feats, head, head_weight)
