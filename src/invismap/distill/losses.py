"""Distillation losses (the paper's Table 1 variants).

- ``mid``: MSE between student and teacher neck features, averaged over the scales (the paper's best);
- ``head``: MSE between the raw head outputs of student and teacher features, both through the
  teacher's frozen heads (the paper's "Yolo-only");
- ``mid+head``: ``mid + head_weight * head`` (the paper tried 0.05, 0.1 and 1.0).

``head_focus`` weighs the head term's anchors by the teacher's objectness (:func:`focused_head_mse`). With a
*thermal teacher* (a thermal detector from an earlier distillation), the head term's target is
:func:`union_of_teachers`: at each anchor, the head outputs of whichever teacher is surer of an object there.
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


def focused_head_mse(student_raw: Sequence[torch.Tensor], teacher_raw: Sequence[torch.Tensor],
                     outputs_per_anchor: int, focus: float) -> torch.Tensor:
    """Head MSE with each anchor weighted ``w = 1 + focus * sigmoid(teacher objectness)``, mean over scales.

    Nearly every anchor is background, so a plain MSE spends itself on cells the detector discards; the
    weight turns it towards the anchors where the teacher sees an object (as fine-grained feature imitation,
    Wang et al. 2019, does near objects). Per scale ``sum(w * (s - t)^2) / sum(w)`` over every output of an
    anchor, so ``focus = 0`` is :func:`feature_mse`.

    Args:
        student_raw, teacher_raw: per scale ``(B, A * no, H, W)`` raw head outputs (objectness at index 4).
        outputs_per_anchor: ``no = 5 + num_classes``.
        focus: >= 0.

    Example:
        >>> t = torch.zeros(1, 12, 1, 1); t[0, 4], t[0, 10] = 20.0, -20.0  # an object, then background
        >>> s = t.clone(); s[0, 6:] += 1.0  # the student is wrong on the background anchor only
        >>> [round(float(focused_head_mse([s], [t], 6, focus)), 3) for focus in (0.0, 9.0)]
        [0.5, 0.091]
    """
    out = []
    for s, t in zip(student_raw, teacher_raw):
        b, _, h, w = t.shape
        sq = (s - t).pow(2).view(b, -1, outputs_per_anchor, h, w)
        weight = 1 + focus * torch.sigmoid(t.view(b, -1, outputs_per_anchor, h, w)[:, :, 4:5])
        out.append((weight * sq).sum() / (weight.sum() * outputs_per_anchor))
    return torch.stack(out).mean()


def union_of_teachers(color_raw: Sequence[torch.Tensor], thermal_raw: Sequence[torch.Tensor],
                      outputs_per_anchor: int) -> list[torch.Tensor]:
    """Per scale, anchor and cell, the raw head outputs of the teacher with the higher objectness logit.

    The color teacher misses what the color image hides (shade, glare, dusk); a thermal detector from an
    earlier distillation sees those objects. Taking, anchor by anchor, the outputs (box, objectness, classes)
    of the more confident of the two makes the target the union of their detections.

    Args:
        color_raw, thermal_raw: per scale ``(B, A * no, H, W)`` raw head outputs of the same crop (objectness
            at index 4 of each anchor's ``no`` outputs, as YOLO heads).
        outputs_per_anchor: ``no = 5 + num_classes``.

    Returns:
        per scale ``(B, A * no, H, W)``.

    Example:
        >>> c = [torch.tensor([0.0, 0.0, 0.0, 0.0, 2.0, 1.0]).view(1, 6, 1, 1)]
        >>> t = [torch.tensor([9.0, 9.0, 9.0, 9.0, 3.0, 5.0]).view(1, 6, 1, 1)]
        >>> union_of_teachers(c, t, 6)[0].flatten().tolist()  # thermal more confident: its outputs
        [9.0, 9.0, 9.0, 9.0, 3.0, 5.0]
    """
    out = []
    for c, t in zip(color_raw, thermal_raw):
        b, ch, h, w = c.shape
        if t.shape != c.shape or ch % outputs_per_anchor:
            raise ValueError(f"head outputs {tuple(c.shape)} and {tuple(t.shape)} do not match "
                             f"{outputs_per_anchor} outputs per anchor")
        cv, tv = c.view(b, -1, outputs_per_anchor, h, w), t.view(b, -1, outputs_per_anchor, h, w)
        thermal_wins = (tv[:, :, 4:5] > cv[:, :, 4:5])
        out.append(torch.where(thermal_wins, tv, cv).view(b, ch, h, w))
    return out


def distill_loss(kind: str, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor],
                 heads: Callable[[list[torch.Tensor]], list[torch.Tensor]], head_weight: float = 0.1,
                 teacher_raw: Sequence[torch.Tensor] | None = None, head_focus: float = 0.0,
                 outputs_per_anchor: int = 85) -> dict[str, torch.Tensor]:
    """The loss named ``kind`` plus its parts: ``{'total', 'mid', 'head'}`` (parts not used are absent).

    ``heads`` are the teacher's frozen heads; ``teacher_raw`` may pass precomputed teacher head outputs;
    ``head_focus > 0`` weighs the head term's anchors (:func:`focused_head_mse`, ``outputs_per_anchor`` each).
    """
    loss = LOSSES.get(kind)

    def head() -> torch.Tensor:
        raw = teacher_raw
        if raw is None:
            with torch.no_grad():
                raw = heads(list(teacher_feats))
        if head_focus:
            return focused_head_mse(heads(list(student_feats)), raw, outputs_per_anchor, head_focus)
        return feature_mse(heads(list(student_feats)), raw)

    return loss(student_feats, teacher_feats, head, head_weight)
